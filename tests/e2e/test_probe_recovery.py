"""After a real Redis restart and a real Sentinel failover every worker consumes again by itself, with no probe
and no restart (PRODUCT.md §12): the field's most reported Celery + Redis failure is a worker that stays up and
takes nothing after such an event. How long each worker takes to consume again is measured and printed; only a
generous bound is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.commands import cli
from tests.e2e.conftest import StartWorker
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from worker.localstack.sentinel import SentinelStack
from worker.localstack.servers import RedisServer

#: Every worker consumes again within this after Redis is back (measured: a few seconds; asserted loosely).
RECOVERY_BOUND_S = 45.0

#: A steady producer: a small batch every 0.2 s, retried with its batch id while Redis is away.
PRODUCER = textwrap.dedent(
    """
    import json, sys, time
    from worker import EnqueueFailed, enqueue_batch
    from worker.localstack.sample_traces import generate_traces

    traces = list(generate_traces(5, seed=3))
    while True:
        batch_id = None
        while True:
            try:
                receipt = enqueue_batch(traces, source="recovery", batch_id=batch_id)
                break
            except EnqueueFailed as failed:
                batch_id = failed.batch_id
                time.sleep(0.2)
        print(json.dumps({"batch_id": str(receipt.batch_id), "at": time.time()}), flush=True)
        time.sleep(0.2)
    """
)


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (tmp_path / "producer.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", PRODUCER], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def successes(worker: WorkerProcess, since: int) -> int:
    with worker.log_path.open("rb") as log:
        log.seek(since)
        return sum(b"] succeeded in" in line and b"ingest.batch[" in line for line in log)


def time_until_each_consumes(workers: list[WorkerProcess], since: float) -> dict[str, float]:
    """Seconds from `since` (monotonic) until each worker's log shows a stored batch it took after that."""
    offsets = {worker.name: worker.log_path.stat().st_size for worker in workers}
    consumed: dict[str, float] = {}

    def everyone() -> bool:
        for worker in workers:
            if worker.name not in consumed and successes(worker, offsets[worker.name]):
                consumed[worker.name] = time.monotonic() - since
        return len(consumed) == len(workers)

    wait_for(
        everyone,
        timeout=RECOVERY_BOUND_S,
        interval=0.1,
        what="every worker to consume again",
        explain=lambda: "\n".join(f"{w.name}: {w.log()[-1500:]}" for w in workers if w.name not in consumed),
    )
    return consumed


def probes_pass(workers: list[WorkerProcess], env: dict[str, str] | None = None) -> None:
    for worker in workers:
        answer = cli("probe", "worker", "--node", f"{worker.name}@%h", "--stall-after", "5", env=env, timeout=30)
        assert answer.returncode == 0, answer.stderr


def test_every_worker_consumes_again_by_itself_after_a_redis_restart(
    start_worker: StartWorker,
    producer: Callable[[dict[str, str]], subprocess.Popen[bytes]],
    redis_server: RedisServer | None,
) -> None:
    if redis_server is None:
        pytest.skip("TEST_REDIS_URL points at a server this suite does not own and cannot restart")
    workers = [start_worker(name, concurrency=1) for name in ("restart-a", "restart-b")]
    producer({})
    time_until_each_consumes(workers, time.monotonic())  # both consume before the fault

    stopped_at = time.monotonic()
    redis_server.stop()  # SIGTERM: Redis writes its append-only file and closes every connection
    redis_server.start()  # same port, same data
    back_at = time.monotonic()
    consumed = time_until_each_consumes(workers, back_at)
    print(
        f"\nredis restart: down {back_at - stopped_at:.2f} s; each worker consumed again "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in consumed.items())
        + " after Redis was back"
    )
    assert all(worker.running() for worker in workers)
    probes_pass(workers)


@pytest.fixture
def sentinel_stack(tmp_path: Path) -> Iterator[SentinelStack]:
    """Set up before the workers and the producer, so it is removed after they stopped."""
    stack = SentinelStack(tmp_path / "ha")
    stack.start()
    yield stack
    stack.remove()


def test_every_worker_consumes_again_by_itself_after_a_sentinel_failover(
    sentinel_stack: SentinelStack,
    start_worker: StartWorker,
    producer: Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:
    stack = sentinel_stack
    env = {"REDIS_URL": stack.url, "REDIS_SENTINEL_MASTER": stack.master_name}
    workers = [start_worker(name, concurrency=1, env=env) for name in ("failover-a", "failover-b")]
    producer(env)
    time_until_each_consumes(workers, time.monotonic())

    old_master = stack.master.port
    stack.master.kill()  # SIGKILL: the master's connections die with it, unannounced
    killed_at = time.monotonic()
    wait_for(lambda: stack.master_port() != old_master, timeout=30, what="a Sentinel to promote a replica")
    promoted_after = time.monotonic() - killed_at
    consumed = time_until_each_consumes(workers, killed_at)
    print(
        f"\nsentinel failover: new master named {promoted_after:.1f} s after the kill; each worker consumed again "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in consumed.items())
        + " after the kill"
    )
    assert all(worker.running() for worker in workers)
    probes_pass(workers, env)
