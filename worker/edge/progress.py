"""What each worker node has done lately, kept in Redis for `tunix-ingest probe worker` and `tunix-ingest metrics`.

A worker can keep its heartbeat (worker.edge.heartbeat: a thread, not on the broker connection) while consuming nothing:
after a Redis reconnect or failover its broker connection may be half-open, and the worker waits forever for a
reply that never comes. Only what it *does* tells: so every node marks `ingest:progress:<worker id>` when it takes
a message (`task_received`, main process) and when a task ends (`task_postrun`, the pool process), and the probe
compares that mark with the age of the oldest queued batch. Each batch's outcome also feeds counters and the
enqueue→published histogram the metrics command exports (workers are the only place that sees them): the delivery
counts it (`count_outcome`) in the round trip that releases the batch's custody, not in one of its own.

`ingest:nodes` maps each node name to its current worker id, so readers find a node's keys without a SCAN; a clean
shutdown removes the node, a crash leaves it for the metrics to report as down. Every write is best effort: one
pipelined round trip, and a Redis error loses a mark, never a task.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from worker import keys
from worker.edge.heartbeat import current_worker_id
from worker.settings import redact

log = logging.getLogger(__name__)

#: Seconds from `enqueue_batch` to the batch's event: a healthy queue is sub-second, a backlog minutes.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
#: A mark outlives any sensible stall bound; when it is gone the probe falls back to the worker's start time.
PROGRESS_TTL_S = 24 * 3600
#: Marks from one process are at most this frequent: enough for a bound of seconds, cheap at any task rate.
_MARK_EVERY_S = 1.0
_last_mark = 0.0

#: Forget a node only if it is still the one this worker registered (a new process may have taken the name).
_FORGET_IF_MINE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def node_of(worker_id: str) -> str:
    return worker_id.rsplit("#", 2)[0]


def started_at(worker_id: str) -> float:
    """The start time written into a worker id (0 if the id has none)."""
    try:
        return float(worker_id.rsplit("#", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def latency_bucket(seconds: float) -> str:
    return next((repr(bound) for bound in LATENCY_BUCKETS_S if seconds <= bound), "+Inf")


def _client() -> Redis:
    from worker.redis_connect import shared_client  # late: settings may change before the worker starts

    return shared_client()


def _mark(pipe: Any, worker_id: str, now: float) -> None:
    global _last_mark
    _last_mark = time.monotonic()
    pipe.set(keys.progress_key(worker_id), f"{now:.3f}", ex=PROGRESS_TTL_S)
    pipe.hset(keys.NODES, node_of(worker_id), worker_id)  # re-registers a node the metrics forgot while it was away


def count_outcome(pipe: Any, *, state: str, count: int, published: bool, enqueued_at: object, now: float) -> None:
    """Queue, in the caller's pipeline, the counters of one batch's final outcome (`state`: ingested, failed or
    rejected; `count`: its stored traces) and, when its event is out, its enqueue→published time. `enqueued_at`:
    what the message says (ISO 8601 text; anything else tells no latency)."""
    if state == "ingested":
        pipe.hincrby(keys.COUNTERS, "batches_ingested", 1)
        pipe.hincrby(keys.COUNTERS, "traces_ingested", count)
        if published and isinstance(enqueued_at, str):
            try:
                waited = max(0.0, now - datetime.fromisoformat(enqueued_at).timestamp())
            except ValueError:  # a hand-crafted message: no latency to tell
                return
            pipe.hincrby(keys.LATENCY, latency_bucket(waited), 1)
            pipe.hincrby(keys.LATENCY, "count", 1)
            pipe.hincrbyfloat(keys.LATENCY, "sum", waited)
    elif state in ("failed", "rejected"):
        pipe.hincrby(keys.COUNTERS, f"batches_{state}", 1)


def _write(fill: Any) -> None:
    try:
        with _client().pipeline(transaction=False) as pipe:
            fill(pipe)
            pipe.execute()
    except RedisError as error:
        log.warning("progress not recorded: %s", redact(str(error)))


def mark_progress(**_: object) -> None:
    """A message was taken or a task ended in this process: mark the node's progress, if the last mark is due."""
    worker_id = current_worker_id()
    if worker_id and time.monotonic() - _last_mark >= _MARK_EVERY_S:
        _write(lambda pipe: _mark(pipe, worker_id, time.time()))


def register_node(**_: object) -> None:
    """Registered as soon as the worker is named (worker.edge.heartbeat names it on the same signal, first)."""
    worker_id = current_worker_id()
    if worker_id:
        _write(lambda pipe: pipe.hset(keys.NODES, node_of(worker_id), worker_id))


def unregister_node(**_: object) -> None:
    """A clean stop is no outage: the node leaves the registry, so no alert says its heartbeat is gone."""
    worker_id = current_worker_id()
    if worker_id:
        _write(lambda pipe: pipe.eval(_FORGET_IF_MINE, 1, keys.NODES, node_of(worker_id), worker_id))
