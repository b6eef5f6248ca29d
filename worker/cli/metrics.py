"""Prometheus metrics that Flower lacks: what is stored, queued and still unannounced (read on each scrape)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.cli.stats import collect_stats


class IngestCollector(Collector):
    """Reads PostgreSQL and Redis when scraped; a scrape costs four small queries and a few Redis commands."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = collect_stats()
        yield GaugeMetricFamily("tunix_ingest_traces_stored", "Traces stored in PostgreSQL.", stats.traces_stored)
        by_state = GaugeMetricFamily("tunix_ingest_batches", "Batches by state.", labels=["state"])
        for state, count in stats.batches_by_state.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "tunix_ingest_unpublished_batches",
            "Stored batches whose event is not out yet (the sweep publishes them).",
            stats.unpublished_batches,
        )
        yield GaugeMetricFamily("tunix_ingest_queue_depth", "Batches waiting in the ingest queue.", stats.queue_depth)
        yield GaugeMetricFamily(
            "tunix_ingest_oldest_waiting_seconds",
            "Age of the oldest waiting batch (0 when the queue is empty).",
            stats.oldest_waiting_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "tunix_ingest_batches_in_transit",
            "Accepted batches not in PostgreSQL yet: queued, running, or lost and about to be sent again.",
            stats.batches_in_transit,
        )
        yield GaugeMetricFamily(
            "tunix_ingest_lost_batches_resent",
            "Batches lost between Redis and a worker and sent again by reprocess.resend_lost (a counter).",
            stats.lost_batches_resent,
        )
        yield GaugeMetricFamily(
            "tunix_ingest_bodies_missing",
            "Claim checks whose body was gone from Redis and whose batch was not stored: parked as failed (a counter).",
            stats.bodies_missing,
        )
        pending = GaugeMetricFamily(
            "tunix_ingest_consumer_pending",
            "Events delivered to a consumer group, not yet acknowledged.",
            labels=["group"],
        )
        lag = GaugeMetricFamily(
            "tunix_ingest_consumer_lag", "Events a consumer group has not been delivered yet.", labels=["group"]
        )
        for group, figures in stats.consumer_groups.items():
            pending.add_metric([group], figures.pending)
            if figures.lag is not None:
                lag.add_metric([group], figures.lag)
        yield pending
        yield lag
        yield GaugeMetricFamily(
            "tunix_ingest_redis_used_memory_bytes",
            "Redis used_memory: queued bodies, custody records, task results and the event stream.",
            stats.redis_used_memory_bytes,
        )
