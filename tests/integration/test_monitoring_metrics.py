"""What workers record as they go (worker.edge.progress: marks driven here through Celery's own signals, outcomes
counted as the delivery counts them) reaches `tunix-ingest metrics` under Prometheus' naming conventions, and every
metric the dashboard and the alerts name is exported. tests/integration/test_task_edge.py holds a real delivery's
outcome to the same counters."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import signals
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring_files import referenced_metrics
from worker import keys
from worker.edge import progress
from worker.keys import NODES_DOWN_SINCE as DOWN_SINCE
from worker.keys import heartbeat_key
from worker.monitoring.collector import IngestCollector
from worker.monitoring.worker_nodes import FORGET_AFTER_S

NODE = "itest@host"


def scrape(budget: float | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name → {sorted labels → value} of one scrape."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(budget))
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def finish(redis_url: str, message: dict[str, Any], state: str, count: int, published: bool = True) -> None:
    """A batch's final outcome, counted as the delivery counts it: in a pipeline it sends (with its release)."""
    with redis.Redis.from_url(redis_url) as client, client.pipeline(transaction=False) as pipe:
        progress.count_outcome(
            pipe, state=state, count=count, published=published, enqueued_at=message["enqueued_at"], now=time.time()
        )
        pipe.execute()


def take_task() -> None:
    """A message taken from the queue, in the worker's main process; marks are at most one a second per
    process, so the test forgets the previous one first."""
    progress._last_mark = 0.0
    signals.task_received.send(sender=None, request=SimpleNamespace(name="reprocess.sweep"))


@pytest.fixture
def worker_id(monkeypatch: pytest.MonkeyPatch) -> str:
    """This process poses as a worker node's process (the identity worker.edge.heartbeat gives it at start)."""
    identity = f"{NODE}#4242#{int(time.time()) - 60}"
    monkeypatch.setenv("TUNIX_INGEST_WORKER_ID", identity)
    monkeypatch.setattr(progress, "_last_mark", 0.0)
    return identity


def test_finished_batches_feed_the_counters_and_the_latency_histogram(
    worker_id: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enqueued = (datetime.now(UTC) - timedelta(seconds=3)).isoformat()
    message = {"batch_id": str(uuid.uuid4()), "enqueued_at": enqueued}
    finish(redis_url, message, "ingested", 20)
    finish(redis_url, message, "ingested", 10, published=False)  # the sweep announces this one
    finish(redis_url, message, "failed", 0, published=False)
    finish(redis_url, message, "rejected", 0, published=False)
    finish(redis_url, {"enqueued_at": "not a time"}, "ingested", 0)  # a hand-crafted message tells no latency
    monkeypatch.setattr(progress, "_last_mark", 0.0)
    signals.task_postrun.send(sender=None, task=None, state="RETRY")  # a task that ended marks progress

    metrics = scrape()
    assert metrics["tunix_ingest_batches_ingested_total"][()] == 3
    assert metrics["tunix_ingest_traces_ingested_total"][()] == 30
    parked = metrics["tunix_ingest_batches_parked_total"]
    assert parked[(("state", "failed"),)] == 1 and parked[(("state", "rejected"),)] == 1
    buckets = metrics["tunix_ingest_enqueue_to_published_seconds_bucket"]
    assert buckets[(("le", "2.5"),)] == 0 and buckets[(("le", "5.0"),)] == 1 and buckets[(("le", "+Inf"),)] == 1
    assert metrics["tunix_ingest_enqueue_to_published_seconds_count"][()] == 1
    assert 3 <= metrics["tunix_ingest_enqueue_to_published_seconds_sum"][()] < 10
    progress_at = metrics["tunix_ingest_worker_last_progress_timestamp_seconds"][(("node", NODE),)]
    assert abs(progress_at - time.time()) < 5


def test_a_node_is_up_while_it_beats_down_after_a_crash_and_gone_after_a_clean_stop(
    worker_id: str, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    take_task()  # registers the node
    client.set(heartbeat_key(worker_id), int(time.time()), ex=10)
    assert scrape()["tunix_ingest_worker_up"] == {(("node", NODE),): 1.0}

    client.delete(heartbeat_key(worker_id))  # it died: the key expired and no clean shutdown forgot it
    assert scrape()["tunix_ingest_worker_up"] == {(("node", NODE),): 0.0}
    client.hset(DOWN_SINCE, NODE, time.time() - FORGET_AFTER_S - 1)  # an hour later
    assert "tunix_ingest_worker_up" not in scrape()
    assert not client.hexists(keys.NODES, NODE)

    take_task()
    assert scrape()["tunix_ingest_worker_up"] == {(("node", NODE),): 0.0}  # back in the registry, not beating
    progress.unregister_node()  # a clean stop: not an outage, no series left to alert on
    assert "tunix_ingest_worker_up" not in scrape()


def test_every_metric_the_dashboard_and_the_alerts_name_is_exported(worker_id: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create("traces:ingested", "dashboards", id="0", mkstream=True)
    take_task()
    client.set(heartbeat_key(worker_id), int(time.time()), ex=10)
    metrics = scrape(budget=123456789)
    ours = {name for name in referenced_metrics() if name.startswith("tunix_ingest_")}
    assert ours - set(metrics) == set()
    assert metrics["tunix_ingest_redis_memory_budget_bytes"][()] == 123456789
    assert metrics["tunix_ingest_lost_batches_resent_total"][()] == 0  # counters end in _total
    assert metrics["tunix_ingest_bodies_missing_total"][()] == 0
    assert metrics["tunix_ingest_consumer_lag"] == {(("group", "dashboards"),): 0.0}
    assert metrics["tunix_ingest_consumer_short_batches_total"] == {(("group", "dashboards"),): 0.0}
    # Labels take bounded values only: batch states, consumer groups, worker nodes and histogram bounds.
    label_names = {name for samples in metrics.values() for labels in samples for name, _ in labels}
    assert label_names <= {"state", "group", "node", "le"}
