"""The throwaway servers the tests, `tunix-ingest run` and the bench start: a server that could not have its port
fails to start loudly, and ports handed out before their servers start are never handed out twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.polling import wait_for
from worker.localstack.ports import LOOPBACK, ephemeral_range, free_port, port_range
from worker.localstack.sentinel import SentinelServer
from worker.localstack.servers import PostgresServer, RedisServer


@pytest.fixture
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "first", appendonly=False)
    server.start()
    yield server
    server.remove()


def test_free_ports_are_never_handed_out_twice_and_lie_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(300)]  # nothing binds them, as in a Sentinel stack before it starts

    assert len(set(ports)) == len(ports)
    assert not any(low <= port <= high for port in ports)
    with socket.socket() as probe:
        probe.bind((LOOPBACK, ports[-1]))


@pytest.mark.parametrize(
    ("ephemeral", "drawn_from"),
    [
        ((32_768, 60_999), range(16_384, 32_768)),  # Linux's default: the wider gap is below
        ((1_024, 40_000), range(40_001, 65_536)),  # no room below
        ((10_000, 65_000), range(5_000, 10_000)),
        ((1_024, 65_000), range(1_024, 65_001)),  # no gap 1,000 wide: the ephemeral range itself
    ],
)
def test_ports_are_drawn_beside_the_ephemeral_range_where_there_is_room(
    ephemeral: tuple[int, int], drawn_from: range
) -> None:
    assert port_range(ephemeral) == drawn_from


def test_a_redis_whose_port_another_redis_holds_fails_to_start(running_redis: RedisServer, tmp_path: Path) -> None:
    second = RedisServer(tmp_path / "second", port=running_redis.port, appendonly=False)

    refused = f"redis-server exited|port {running_redis.port} .* process {running_redis.pid()} answers there"
    with pytest.raises(RuntimeError, match=refused):
        second.start()
    second.remove()
    with Redis(host=LOOPBACK, port=running_redis.port) as client:
        assert client.info("server")["process_id"] == running_redis.pid()


def test_a_sentinel_whose_port_a_plain_redis_holds_fails_to_start(running_redis: RedisServer, tmp_path: Path) -> None:
    """What made a failover test's set-up fail later with "unknown command 'SENTINEL'": the Sentinel could not bind,
    and the plain Redis on its port answered the readiness PING."""
    sentinel = SentinelServer(tmp_path / "sentinel", running_redis.port)
    squatter = RedisServer(tmp_path / "squatter", port=sentinel.port, appendonly=False)
    squatter.start()
    try:
        with pytest.raises(RuntimeError, match="redis sentinel"):
            sentinel.start()
        assert sentinel.process is not None and sentinel.process.poll() is not None  # nothing left running
    finally:
        sentinel.remove()
        squatter.remove()


def test_a_postgresql_that_does_not_stop_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop that fails is an error, not a server left running unseen after the tests."""
    server = PostgresServer(tmp_path / "pg")
    server.start()
    try:
        with monkeypatch.context() as failing:
            refused = subprocess.CompletedProcess([], 1, b"", b"pg_ctl: server does not shut down")
            failing.setattr(server, "_pg_ctl", lambda *_: refused)

            with pytest.raises(RuntimeError, match="PostgreSQL did not stop: pg_ctl: server does not shut down"):
                server.stop()
    finally:
        server.remove()
    assert not server.data.exists()


def test_a_postgresql_killed_from_outside_counts_as_stopped(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg")
    server.start()
    postmaster = server.pid()
    os.kill(postmaster, signal.SIGKILL)  # its pid file stays behind
    wait_for(lambda: not Path(f"/proc/{postmaster}/exe").exists(), what="the postmaster gone")  # reaped or zombie

    server.remove()
    assert not server.directory.exists()
