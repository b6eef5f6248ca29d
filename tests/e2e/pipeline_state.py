"""What the queue and the batch table hold: the state printed when an end-to-end wait times out."""

from __future__ import annotations

import time

import redis

from tests.db import query
from tests.e2e.workers import WorkerProcess


def describe_pipeline(database_url: str, redis_url: str, *workers: WorkerProcess) -> str:
    states = query(
        database_url, "SELECT state, published_at IS NOT NULL, count(*), max(attempts) FROM batch GROUP BY 1, 2"
    )
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    scores: list[tuple[bytes, float]] = client.zrange("unacked_index", 0, -1, withscores=True)  # type: ignore[assignment]
    unacked_ages = [round(now - score, 1) for _, score in scores]
    lines = [
        f"batches (state, published, count, max attempts): {[tuple(row) for row in states]}",
        f"queue 'ingest': {client.llen('ingest')} waiting; unacked ages (s): {unacked_ages}; "
        f"unacked_mutex ttl: {client.ttl('unacked_mutex')}",
    ]
    for worker in workers:
        lines.append(f"--- last lines of worker {worker.name}'s log:\n" + "\n".join(worker.log().splitlines()[-25:]))
    return "\n".join(lines)
