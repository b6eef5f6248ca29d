"""Prometheus metrics that Flower lacks: what is stored, queued and still unannounced (read on each scrape).

Names follow Prometheus' conventions: `tunix_ingest_` first, counters end in `_total`, units in the name
(`_seconds`, `_bytes`), latencies are histograms, and labels take bounded values only (batch state, consumer
group, worker node). The limits the alerts compare against are exported beside the figures (`…_limit`,
`…_budget_bytes`, `…_bound_seconds`), so the rules in deploy/monitoring follow the configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.monitoring import outbox_figures
from worker.edge.oneshot import with_session
from worker.monitoring.store_figures import IngestStats, collect_stats
from worker.monitoring.worker_figures import latency_family, node_families, outcome_families
from worker.redis_connect import shared_client
from worker.settings import get_settings

#: The Redis budget of docs/operations.md ("Redis memory"): a full queue of 1,000-trace batches plus a day's
#: results, keys and a full event stream, with the default settings.
DEFAULT_REDIS_BUDGET_BYTES = 4_500_000_000


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value)


def store_families(stats: IngestStats) -> Iterator[Metric]:
    yield _gauge("tunix_ingest_traces_stored", "Traces stored in PostgreSQL.", stats.traces_stored)
    by_state = GaugeMetricFamily("tunix_ingest_batches", "Batches by state.", labels=["state"])
    for state, count in stats.batches_by_state.items():
        by_state.add_metric([state], count)
    yield by_state
    yield _gauge(
        "tunix_ingest_unpublished_batches",
        "Stored batches whose event is not out yet (the sweep publishes them).",
        stats.unpublished_batches,
    )
    yield _gauge("tunix_ingest_queue_depth", "Batches waiting in the ingest queue.", stats.queue_depth)
    yield _gauge(
        "tunix_ingest_oldest_waiting_seconds",
        "Age of the oldest waiting batch (0 when the queue is empty).",
        stats.oldest_waiting_age_s or 0.0,
    )
    yield _gauge(
        "tunix_ingest_batches_in_transit",
        "Accepted batches not in PostgreSQL yet: queued, running, or lost and about to be sent again.",
        stats.batches_in_transit,
    )
    yield CounterMetricFamily(
        "tunix_ingest_lost_batches_resent",
        "Batches lost between Redis and a worker and sent again by reprocess.resend_lost.",
        stats.lost_batches_resent,
    )
    yield CounterMetricFamily(
        "tunix_ingest_bodies_missing",
        "Claim checks whose body was gone from Redis and whose batch was not stored: parked as failed.",
        stats.bodies_missing,
    )
    yield _gauge(
        "tunix_ingest_redis_used_memory_bytes",
        "Redis used_memory: queued bodies, custody records, task results and the event stream.",
        stats.redis_used_memory_bytes,
    )


def consumer_families(stats: IngestStats) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "tunix_ingest_consumer_pending", "Events delivered to a consumer group, not yet acknowledged.", labels=["group"]
    )
    lag = GaugeMetricFamily(
        "tunix_ingest_consumer_lag", "Events a consumer group has not been delivered yet.", labels=["group"]
    )
    short = CounterMetricFamily(
        "tunix_ingest_consumer_short_batches",
        "Batches a consumer group loaded with rows missing and left pending to load again.",
        labels=["group"],
    )
    for group, figures in stats.consumer_groups.items():
        pending.add_metric([group], figures.pending)
        if figures.lag is not None:
            lag.add_metric([group], figures.lag)
        short.add_metric([group], figures.short_batches)
    yield pending
    yield lag
    yield short


def outbox_families() -> Iterator[Metric]:
    figures = with_session(outbox_figures)
    yield _gauge(
        "tunix_ingest_oldest_unpublished_seconds",
        "Age of the oldest stored batch whose event is not out yet (0 when none waits).",
        figures.oldest_unpublished_age_s or 0.0,
    )
    yield CounterMetricFamily(
        "tunix_ingest_batches_redriven", "Re-drives of failed batches (scheduled or `redrive`).", figures.redrives
    )


def limit_families(redis_budget_bytes: float) -> Iterator[Metric]:
    settings = get_settings()
    yield _gauge(
        "tunix_ingest_queue_depth_limit",
        "INGEST_MAX_QUEUE_DEPTH: beyond it producers get QueueFull.",
        settings.ingest_max_queue_depth,
    )
    yield _gauge(
        "tunix_ingest_sweep_bound_seconds",
        "SWEEP_GRACE_S + SWEEP_INTERVAL_S: the outbox sweep publishes a forgotten event within this.",
        settings.sweep_grace_s + settings.sweep_interval_s,
    )
    yield _gauge(
        "tunix_ingest_events_maxlen",
        "INGEST_EVENTS_MAXLEN: a consumer group lagging further behind loses events to trimming.",
        settings.ingest_events_maxlen,
    )
    yield _gauge(
        "tunix_ingest_redis_memory_budget_bytes",
        "The Redis memory budget (`metrics --redis-memory-budget`, else Redis maxmemory, else the documented one).",
        redis_budget_bytes,
    )


class IngestCollector(Collector):
    """Reads PostgreSQL and Redis when scraped: a few small queries (one count over `trace`) and a few pipelined
    Redis commands. A failing server fails the scrape, so Prometheus' `up` says so."""

    def __init__(self, redis_budget_bytes: float | None = None) -> None:
        self.redis_budget_bytes = redis_budget_bytes

    def _budget(self) -> float:
        if self.redis_budget_bytes:
            return self.redis_budget_bytes
        maxmemory = int(shared_client().info("memory").get("maxmemory", 0))
        return float(maxmemory or DEFAULT_REDIS_BUDGET_BYTES)

    def collect(self) -> Iterator[Metric]:
        stats = collect_stats()
        redis = shared_client()
        yield from store_families(stats)
        yield from consumer_families(stats)
        yield from outbox_families()
        yield from outcome_families(redis)
        yield latency_family(redis)
        yield from node_families(redis)
        yield from limit_families(self._budget())
