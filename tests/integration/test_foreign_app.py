"""Importing `worker` changes nothing for another Celery app in the same process (PRODUCT.md §4): its workers
get no ingest identity, so they write no heartbeat, no progress and no node entry to this product's Redis."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

import worker.edge.app  # noqa: F401  (the import under test: building the app connects its signal handlers)
from worker import keys
from worker.edge.heartbeat import current_worker_id


def test_another_apps_worker_in_this_process_gets_no_ingest_identity_and_writes_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNIX_INGEST_WORKER_ID", raising=False)
    client = redis.Redis.from_url(redis_url)
    foreign = Celery("billing", broker=redis_url, backend=redis_url)

    def _add(x: int, y: int) -> int:
        return x + y

    add = foreign.task(name="billing.add")(_add)

    with start_worker(foreign, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        assert add.delay(2, 3).get(timeout=20) == 5
        assert current_worker_id() == ""

    assert client.hlen(keys.NODES) == 0
    assert list(client.scan_iter("ingest:*")) == []
