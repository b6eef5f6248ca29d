"""Reading the "ingested" stream in tests, as a consumer would."""

from __future__ import annotations

from typing import Any, cast

import redis

STREAM = "traces:ingested"


def stream_events(redis_url: str, stream: str = STREAM) -> list[dict[str, str]]:
    """Every entry of the stream, oldest first, with decoded field names and values."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
    finally:
        client.close()
    return [fields for _, fields in entries]


def events_by_batch(redis_url: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for fields in stream_events(redis_url):
        grouped.setdefault(fields["batch_id"], []).append(fields)
    return grouped
