"""Loopback ports for the throwaway servers, and telling whether the server answering on one is ours."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

LOOPBACK = "127.0.0.1"

#: Linux's default, for a kernel that does not say.
_DEFAULT_EPHEMERAL_RANGE = (32_768, 60_999)
#: A gap narrower than this beside the ephemeral range is not used: few draws would find a port in it.
_NARROWEST_GAP = 1_000

#: Ports this process has handed out. Their servers start later (a Sentinel stack picks six ports before starting
#: any), so a port must not be handed out twice while nothing is bound to it yet.
_handed_out: set[int] = set()
_port_choice = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections, both ends included."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL_RANGE


def port_range(ephemeral: tuple[int, int]) -> range:
    """Where free ports are drawn from: outside the ephemeral range (an outgoing connection's local port could take
    a port from it between its choice and the server's bind), in the wider of the gaps below and above it; in the
    ephemeral range itself on a host that leaves no gap `_NARROWEST_GAP` wide."""
    low, high = ephemeral
    below, above = range(max(1024, low // 2), low), range(high + 1, 65_536)
    widest = max(below, above, key=len)
    return widest if len(widest) >= _NARROWEST_GAP else range(low, high + 1)


def free_port() -> int:
    """A TCP port on loopback that nothing is bound to now and that this process has not handed out before."""
    candidates = port_range(ephemeral_range())
    for _ in range(10 * len(candidates)):
        port = _port_choice.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {candidates.start}-{candidates.stop - 1}")


def redis_process_id(port: int, password: str | None = None) -> int | None:
    """The process id of the Redis (or Sentinel) answering on `port` once it has loaded its data, else None. A
    server that could not bind its port exits, and until then another one on that port would answer a PING: a
    server is ready when the process answering is its own."""
    client = Redis(
        host=LOOPBACK,
        port=port,
        password=password,
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()  # an error (LOADING) until the append-only file is read
        return int(client.info("server")["process_id"])
    except (RedisError, OSError):
        return None
    finally:
        client.close()


def wait_until_answering(
    process: subprocess.Popen[bytes], port: int, *, password: str | None = None, timeout: float = 15.0
) -> None:
    """Return once the Redis (or Sentinel) started as `process` answers on `port` with its data loaded;
    RuntimeError if it exits first, or if after `timeout` seconds it does not (saying who answers there)."""
    deadline, answering = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        answering = redis_process_id(port, password)
        if answering == process.pid:
            return
        time.sleep(0.02)
    by = f"; process {answering} answers there" if answering else ""
    raise RuntimeError(f"did not answer on port {port} within {timeout:.0f} s{by}")
