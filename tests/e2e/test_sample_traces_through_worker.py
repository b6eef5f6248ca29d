"""The 550 real traces of the tunix-rt backend through `enqueue_batch` and a real worker process."""

from __future__ import annotations

import json
from typing import Any

from celery.result import AsyncResult

from tests.conftest import SAMPLE_DATA
from tests.db import as_received, published_batches, query
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from tests.streams import events_by_batch, stream_events
from worker import app, enqueue_batch

BATCH_SIZE = 100


def load_sample() -> list[dict[str, Any]]:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def test_all_550_sample_traces_are_stored_once_equal_and_announced_once(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    traces = load_sample()
    assert len(traces) == 550
    batches = [traces[start : start + BATCH_SIZE] for start in range(0, len(traces), BATCH_SIZE)]
    receipts = [enqueue_batch(batch, source="dev-reasoning-v2") for batch in batches]

    wait_for(lambda: published_batches(database_url) == len(batches), timeout=120, what="every batch published")

    rows = query(
        database_url,
        "SELECT batch_id, position, id, trace_version, prompt, final_answer, steps, meta "
        "FROM trace ORDER BY batch_id, position",
    )
    assert len(rows) == 550
    stored = {(row.batch_id, row.position): row for row in rows}
    for receipt, batch in zip(receipts, batches, strict=True):
        for position, trace in enumerate(batch):
            row = stored[(receipt.batch_id, position)]
            assert as_received(row) == trace
    by_batch = events_by_batch(redis_url)
    assert sorted(by_batch) == sorted(str(receipt.batch_id) for receipt in receipts)
    for receipt in receipts:
        (event,) = by_batch[str(receipt.batch_id)]
        announced = json.loads(event["ids"])
        assert announced == [stored[(receipt.batch_id, p)].id for p in range(receipt.trace_count)]

    again = [
        enqueue_batch(batch, source="dev-reasoning-v2", batch_id=receipt.batch_id)
        for receipt, batch in zip(receipts, batches, strict=True)
    ]
    for first, second in zip(receipts, again, strict=True):
        assert second.batch_id == first.batch_id and second.task_id != first.task_id
        assert AsyncResult(second.task_id, app=app).get(timeout=60) == AsyncResult(first.task_id, app=app).get()

    assert query(database_url, "SELECT count(*) FROM trace")[0][0] == 550
    assert len(stream_events(redis_url)) == len(batches)
