"""`tunix-ingest probe worker` against real worker processes (PRODUCT.md §7, §12): it passes on an idle node, fails
once the node's heartbeat is gone, and fails within its bound when a node stays up but consumes nothing, the way
a worker does after a Redis reconnect leaves its broker connection half-open. Replacing that worker drains the
backlog."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.db import published_batches
from tests.e2e.blackhole_proxy import BlackholeProxy
from tests.e2e.commands import cli
from tests.e2e.conftest import StartWorker
from tests.polling import wait_for
from worker import enqueue_batch
from worker.localstack.sample_traces import generate_traces

#: The probe's bound in these tests: a batch waiting this long while the node takes nothing fails it.
STALL_AFTER_S = 5.0


def probe(node: str, stall_after_s: float = STALL_AFTER_S) -> subprocess.CompletedProcess[str]:
    return cli("probe", "worker", "--node", node, "--stall-after", str(stall_after_s), timeout=30)


def failing_probe(node: str) -> subprocess.CompletedProcess[str] | None:
    answer = probe(node)
    return answer if answer.returncode != 0 else None


def enqueue(batches: int, size: int = 20) -> list[str]:
    traces = list(generate_traces(batches * size, seed=7))
    return [str(enqueue_batch(traces[n * size : (n + 1) * size], source="probe-test").batch_id) for n in range(batches)]


@pytest.fixture
def proxy(redis_url: str) -> Iterator[BlackholeProxy]:
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = BlackholeProxy(port).start()
    yield proxy
    proxy.stop()


def through(proxy: BlackholeProxy, redis_url: str) -> str:
    """`redis_url` with its host and port replaced by the proxy's (credentials and database kept)."""
    parts = urlsplit(redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(
        netloc=f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    ).geturl()


def test_the_probe_passes_on_an_idle_node_and_fails_once_its_heartbeat_is_gone(start_worker: StartWorker) -> None:
    worker = start_worker("idle")
    healthy = probe("idle@%h")
    assert healthy.returncode == 0, healthy.stderr
    assert "alive" in healthy.stdout and "empty" in healthy.stdout
    unknown = probe("nobody@%h")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "no worker heartbeat" in unknown.stderr and "never seen" in unknown.stderr

    worker.kill()  # SIGKILL: no clean shutdown, the heartbeat key is left to expire
    killed_at = time.monotonic()
    gone = wait_for(lambda: failing_probe("idle@%h"), timeout=30, interval=0.5, what="the probe to fail")
    assert gone is not None
    detected_after = time.monotonic() - killed_at
    print(f"\nprobe: a SIGKILLed worker's heartbeat was seen gone {detected_after:.1f} s after the kill (TTL 10 s)")
    assert gone.stderr.count("\n") == 1 and "heartbeat expired" in gone.stderr, gone.stderr


def test_a_worker_cut_off_from_redis_fails_the_probe_within_its_bound_and_its_replacement_drains_the_backlog(
    start_worker: StartWorker, proxy: BlackholeProxy, redis_url: str, database_url: str
) -> None:
    env = {"REDIS_URL": through(proxy, redis_url)}
    wedged = start_worker("wedged", env=env)
    warm_up = enqueue(1)
    wait_for(lambda: published_batches(database_url) == 1, timeout=30, what="a batch stored through the proxy")
    assert probe("wedged@%h").returncode == 0

    assert proxy.cut() > 0  # every connection the worker holds is now up and silent
    backlog = enqueue(30)
    cut_at = time.monotonic()
    failed = wait_for(
        lambda: failing_probe("wedged@%h"), timeout=STALL_AFTER_S + 30, interval=0.5, what="the probe to fail"
    )
    detected_after = time.monotonic() - cut_at
    assert failed is not None
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert published_batches(database_url) == 1, "the cut-off worker should have stored nothing"
    assert wedged.running(), "the worker should look alive: that is the fault"

    wedged.kill()
    replaced_at = time.monotonic()
    replacement = start_worker("replacement", env=env)  # the same proxy: only the old connections are dead
    wait_for(
        lambda: published_batches(database_url) == len(warm_up) + len(backlog),
        timeout=60,
        what="the backlog drained by the replacement",
    )
    drained_after = time.monotonic() - replaced_at
    assert probe("replacement@%h").returncode == 0
    print(
        f"\nprobe: cut-off worker (still running, {len(backlog)} batches waiting) failed the probe "
        f"{detected_after:.1f} s after the cut (bound {STALL_AFTER_S:.0f} s + a probe's run) with: "
        f"{failed.stderr.strip()}\nprobe: the replacement drained the backlog {drained_after:.1f} s after the kill "
        f"(start included); its log: {replacement.log_path}"
    )
    assert detected_after < STALL_AFTER_S + 15
