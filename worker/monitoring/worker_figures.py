"""The metrics workers write to Redis as they go (worker.edge.progress): what they stored, how long batches took from
enqueue to their event, and whether each node still beats. Read by `tunix-ingest metrics` on each scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis import Redis

from worker.edge.progress import LATENCY_BUCKETS_S
from worker.keys import COUNTERS, LATENCY
from worker.monitoring.worker_nodes import survey_nodes, text_of


def _fields(redis: Redis, key: str) -> dict[str, float]:
    return {text_of(name): float(value) for name, value in redis.hgetall(key).items()}


def outcome_families(redis: Redis) -> Iterator[Metric]:
    """Counters of what workers finished, always present (an alert on `increase()` needs the zero too)."""
    counted = _fields(redis, COUNTERS)
    yield CounterMetricFamily(
        "tunix_ingest_batches_ingested",
        "Batches stored by workers (a redelivery of a batch already stored counts again).",
        counted.get("batches_ingested", 0.0),
    )
    yield CounterMetricFamily(
        "tunix_ingest_traces_ingested", "Traces stored by workers.", counted.get("traces_ingested", 0.0)
    )
    parked = CounterMetricFamily(
        "tunix_ingest_batches_parked", "Batches parked by workers: rejected (invalid) or failed.", labels=["state"]
    )
    for state in ("failed", "rejected"):
        parked.add_metric([state], counted.get(f"batches_{state}", 0.0))
    yield parked


def latency_family(redis: Redis) -> HistogramMetricFamily:
    """Enqueue → event published, for batches whose worker published the event itself (those the outbox sweep
    publishes later show in `tunix_ingest_oldest_unpublished_seconds` instead)."""
    observed = _fields(redis, LATENCY)
    buckets, cumulative = [], 0.0
    for bound in LATENCY_BUCKETS_S:
        cumulative += observed.get(repr(bound), 0.0)
        buckets.append(
            (repr(bound), cumulative)
        )  # as prometheus_client writes `le` (and worker.edge.progress the field)
    buckets.append(("+Inf", observed.get("count", 0.0)))
    return HistogramMetricFamily(
        "tunix_ingest_enqueue_to_published_seconds",
        "Seconds from enqueue_batch to the batch's event on the stream.",
        buckets=buckets,
        sum_value=observed.get("sum", 0.0),
    )


def node_families(redis: Redis) -> Iterator[Metric]:
    """Per worker node (the `-n` name: one series per node, forgotten an hour after it died)."""
    up = GaugeMetricFamily(
        "tunix_ingest_worker_up", "1 while the worker node's heartbeat is alive, 0 once it died.", labels=["node"]
    )
    beat = GaugeMetricFamily(
        "tunix_ingest_worker_heartbeat_timestamp_seconds", "The node's last heartbeat (Unix time).", labels=["node"]
    )
    progress = GaugeMetricFamily(
        "tunix_ingest_worker_last_progress_timestamp_seconds",
        "When the node last took or finished a task, or started (Unix time).",
        labels=["node"],
    )
    for state in survey_nodes(redis, time.time()):
        up.add_metric([state.node], 1.0 if state.alive else 0.0)
        if state.heartbeat_at is not None:
            beat.add_metric([state.node], state.heartbeat_at)
        progress.add_metric([state.node], state.progress_at)
    yield from (up, beat, progress)
