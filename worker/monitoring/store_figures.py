"""Ingest-level figures that Flower lacks, from PostgreSQL and Redis (`tunix-ingest stats` and `metrics`)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from redis import Redis
from redis.exceptions import ResponseError

from services.reports import StoreTotals, store_totals
from worker.client.enqueue import queue_depth
from worker.custody import records as custody
from worker.edge.oneshot import with_session
from worker.edge.wire import task_kwargs_of
from worker.keys import short_batches_key
from worker.redis_connect import shared_client
from worker.settings import get_settings


class IngestStats(BaseModel):
    traces_stored: int
    batches_by_state: dict[str, int]
    unpublished_batches: int
    queue_depth: int
    oldest_waiting_age_s: float | None
    #: Accepted batches PostgreSQL does not hold yet (queued, running, or lost and about to be sent again).
    batches_in_transit: int
    lost_batches_resent: int
    #: Claim checks whose body was gone and whose batch PostgreSQL did not hold (parked as `failed`).
    bodies_missing: int
    #: Redis's `used_memory`: queued bodies, custody records, task results and the event stream (docs/operations.md).
    redis_used_memory_bytes: int
    #: Per consumer group of the event stream: entries delivered but not acknowledged, and not yet delivered.
    consumer_groups: dict[str, ConsumerGroupLag]


class ConsumerGroupLag(BaseModel):
    pending: int
    lag: int | None
    #: Batches loaded with rows missing and left pending to load again (a lagging replica, or rows gone).
    short_batches: int = 0


def oldest_waiting_age(redis: Redis, queue: str) -> float | None:
    """Seconds since the oldest waiting batch was enqueued (kombu pushes left and pops right)."""
    raw = redis.lindex(queue, -1)
    if raw is None:
        return None
    try:
        kwargs = task_kwargs_of(raw)
        enqueued_at = datetime.fromisoformat(kwargs["enqueued_at"])
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, (datetime.now(UTC) - enqueued_at).total_seconds())


def consumer_groups(redis: Redis, stream: str) -> dict[str, ConsumerGroupLag]:
    """XINFO GROUPS: pending and lag of every group (lag is None when Redis cannot tell, e.g. after trimming)."""
    try:
        groups = redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return {}
    figures = {}
    for group in groups:
        name = str(group["name"].decode() if isinstance(group["name"], bytes) else group["name"])
        figures[name] = ConsumerGroupLag(
            pending=int(group["pending"]),
            lag=None if group.get("lag") is None else int(group["lag"]),
            short_batches=int(redis.get(short_batches_key(stream, name)) or 0),
        )
    return figures


def collect_stats() -> IngestStats:
    settings = get_settings()
    totals: StoreTotals = with_session(store_totals)
    redis = shared_client()
    held = custody.figures(redis)
    return IngestStats(
        **totals.model_dump(),
        queue_depth=queue_depth(),
        oldest_waiting_age_s=oldest_waiting_age(redis, settings.ingest_queue),
        batches_in_transit=held.in_transit,
        lost_batches_resent=held.resent,
        bodies_missing=held.bodies_missing,
        redis_used_memory_bytes=int(redis.info("memory")["used_memory"]),
        consumer_groups=consumer_groups(redis, settings.ingest_events_stream),
    )
