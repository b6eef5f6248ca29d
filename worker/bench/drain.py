"""Measuring real worker processes: drain time of a pre-filled queue, enqueue→published latency, RSS."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any, cast

import asyncpg
from redis import Redis

from worker.client.enqueue import enqueue_batch
from worker.edge.app import app
from worker.keys import REPROCESS_QUEUE
from worker.localstack.processes import ChildProcess, worker_process
from worker.redis_connect import connect
from worker.settings import get_settings

#: The queue idle workers start on: the scheduled jobs' own, empty while the bench runs.
IDLE_QUEUE = REPROCESS_QUEUE


def start_workers(log_dir: Path, processes: int, pool: str, *, draining: bool = True) -> list[ChildProcess]:
    """`processes` pool processes: one prefork node with that many children, or that many solo nodes. Not
    `draining`: they consume no ingest message until `start_draining`, so that what they have used until then
    can be read first."""
    queues = None if draining else IDLE_QUEUE
    if pool == "prefork":
        nodes = [worker_process("bench", log_dir, concurrency=processes, queues=queues)]
    else:
        nodes = [
            worker_process(f"bench{index}", log_dir, concurrency=1, pool="solo", queues=queues)
            for index in range(processes)
        ]
    # A node started again appends to its log: only a "ready" written after this start counts.
    log_ends = [node.log_path.stat().st_size if node.log_path.exists() else 0 for node in nodes]
    for node in nodes:
        node.start()
    for node, since in zip(nodes, log_ends, strict=True):
        node.wait_for_log(b" ready.", since=since)
    return nodes


def node_names(nodes: list[ChildProcess]) -> list[str]:
    """The Celery node names of bench workers (`worker_process` calls them "worker NAME", Celery NAME@host)."""
    return [f"{node.name.removeprefix('worker ')}@{socket.gethostname()}" for node in nodes]


def start_draining(nodes: list[ChildProcess]) -> float:
    """Have idle bench workers consume the ingest queue. Returns the `time.perf_counter()` moment they took its
    first message: a worker takes a queue it is told to add once its current wait on the empty one ends (up
    to a second), which is no part of a drain."""
    settings = get_settings()
    redis = connect()
    try:
        queued = int(redis.llen(settings.ingest_queue))
        waiting = set(node_names(nodes))
        deadline = time.monotonic() + 30
        while waiting:  # a node that just said "ready" may not listen for broadcasts yet: ask again
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(waiting)} did not start consuming {settings.ingest_queue}")
            replies = app.control.add_consumer(
                settings.ingest_queue, destination=sorted(waiting), reply=True, timeout=2
            )
            waiting -= {name for reply in replies for name in reply}
        deadline = time.monotonic() + 10
        while queued and redis.llen(settings.ingest_queue) >= queued:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker took a message of {settings.ingest_queue} within 10 s")
            time.sleep(0.005)
        return time.perf_counter()
    finally:
        redis.close()


def threads(pid: int) -> list[int]:
    """The thread ids of `pid` while it lives (none once it has gone)."""
    try:
        return [int(thread) for thread in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _thread_file(pid: int, thread: int, name: str) -> str:
    """/proc/PID/task/TID/NAME, or "" if the thread has gone."""
    try:
        return Path(f"/proc/{pid}/task/{thread}/{name}").read_text()
    except FileNotFoundError:
        return ""


def children(pids: list[int]) -> list[int]:
    """The live children of `pids` (one level: a prefork node's pool processes, a postmaster's backends), as
    each of their threads forked them (/proc/PID/task/TID/children)."""
    return [
        int(child) for pid in pids for thread in threads(pid) for child in _thread_file(pid, thread, "children").split()
    ]


def _on_cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of `pid` has run so far: the scheduler's own count (/proc/PID/task/TID/schedstat),
    where /proc/PID/stat counts in clock ticks of 10 ms, too coarse for a drain of a few thousand traces."""
    return sum(int(stat.split()[0]) for thread in threads(pid) if (stat := _thread_file(pid, thread, "schedstat")))


def cpu_seconds(pids: list[int], *, with_children: bool = True) -> float:
    """User + system CPU seconds of these processes (and their live children) so far, from /proc."""
    return sum(_on_cpu_ns(pid) for pid in pids + (children(pids) if with_children else [])) / 1e9


def worker_pids(nodes: list[ChildProcess]) -> list[int]:
    return [node.process.pid for node in nodes if node.process]


def rss_mib(nodes: list[ChildProcess]) -> float:
    """Resident memory of every worker process (main processes and pool children), in MiB."""
    pids = worker_pids(nodes)
    total_kb = 0
    for pid in pids + children(pids):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        total_kb += next(int(row.split()[1]) for row in status.splitlines() if row.startswith("VmRSS:"))
    return total_kb / 1024


async def published_batches(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM batch WHERE published_at IS NOT NULL"))
    finally:
        await connection.close()


async def wait_until_published(dsn: str, batches: int, *, started: float | None = None) -> float:
    """Seconds until `batches` batches are published, polling every 50 ms (callers bound it with a timeout), from
    `started` (a `time.perf_counter()` reading) or from now."""
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter() if started is None else started
    try:
        while await connection.fetchval("SELECT count(*) FROM batch WHERE published_at IS NOT NULL") < batches:
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    return time.perf_counter() - started


async def settle_database(dsn: str) -> None:
    """VACUUM ANALYZE after the bulk drain, so the latency phase does not race autovacuum over 100k fresh rows
    (a one-off of the bench's bulk load, not of steady-state ingest)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("VACUUM ANALYZE batch, trace")
    finally:
        await connection.close()


def small_batch_rate(dsn: str, batches: list[list[dict[str, Any]]], *, already_published: int) -> float:
    """Traces per second the running workers drain in these (small) batches: all are enqueued at once, faster
    than they drain, so the figure is the workers' rate, not the producer's."""
    started = time.perf_counter()
    for batch in batches:
        enqueue_batch(batch, source="bench-small")
    asyncio.run(asyncio.wait_for(wait_until_published(dsn, already_published + len(batches)), 600))
    return sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def redis_used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def enqueue_rate(batches: list[list[dict[str, Any]]], source: str) -> float:
    """Traces per second one producer enqueues, validation included."""
    started = time.perf_counter()
    for batch in batches:
        enqueue_batch(batch, source=source)
    return sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def latency_ms(batches: list[list[dict[str, Any]]], rate: float, stream: str) -> dict[str, float]:
    """Enqueue `batches` at `rate` traces/s; enqueue→published latency from each event's stream id (its
    XADD time in ms) back to the moment the producer called `enqueue_batch`."""
    redis = connect(decode_responses=True)
    last = cast(list[tuple[str, dict[str, str]]], redis.xrevrange(stream, count=1))
    start_id = last[0][0] if last else "0"
    interval = len(batches[0]) / rate
    sent: dict[str, float] = {}
    next_at = time.time()
    for batch in batches:
        time.sleep(max(0.0, next_at - time.time()))
        called = time.time()
        sent[str(enqueue_batch(batch, source="bench-latency").batch_id)] = called
        next_at += interval
    deadline = time.time() + 60
    seen: dict[str, float] = {}
    while len(seen) < len(sent) and time.time() < deadline:
        entries = cast(list[tuple[str, dict[str, str]]], redis.xrange(stream, min=f"({start_id}"))
        for entry_id, fields in entries:
            if fields["batch_id"] in sent:
                seen[fields["batch_id"]] = int(entry_id.split("-")[0]) / 1000
        time.sleep(0.1)
    redis.close()
    latencies = sorted((seen[batch] - sent[batch]) * 1000 for batch in seen)
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[max(0, math.ceil(len(latencies) * 0.99) - 1)],
        "batches": len(latencies),
    }
