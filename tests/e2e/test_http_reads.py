"""The tunix-rt backend's clients, end to end: a batch posted with `?wait` through a real `tunix-ingest serve`
and a real `celery worker`, then read back by the ids it answered. Every body is parsed with the backend's own
response models (UUID ids)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.backend_models import TraceBatchCreateResponse, TraceDetail, TraceListResponse
from tests.conftest import SAMPLE_DATA
from tests.e2e.http_servers import ApiServer
from tests.e2e.workers import WorkerProcess


@pytest.fixture(scope="module")
def client(service_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = ApiServer(tmp_path_factory.mktemp("reads-api")).start()
    worker = WorkerProcess("reads").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http
    finally:
        worker.stop()
        server.stop()


def test_ids_from_the_batch_answer_read_back_as_the_backends_trace_details(client: httpx.Client) -> None:
    traces = [json.loads(line) for line in (SAMPLE_DATA / "dev-reasoning-v2.jsonl").read_bytes().splitlines()[:40]]

    posted = client.post("/api/traces/batch", params={"wait": 30}, json=traces)

    assert posted.status_code == 201, posted.text
    created = TraceBatchCreateResponse.model_validate(posted.json())
    details = []
    for made in created.traces:
        response = client.get(f"/api/traces/{made.id}")
        assert response.status_code == 200, response.text
        details.append(TraceDetail.model_validate(response.json()))
    assert [(d.id, d.created_at, d.trace_version) for d in details] == [
        (made.id, made.created_at, made.trace_version) for made in created.traces
    ]
    assert [detail.payload.model_dump() for detail in details] == [{"meta": None, **t} for t in traces]


def test_the_list_hands_out_the_ids_the_batch_answer_gave_newest_first(client: httpx.Client) -> None:
    traces = [json.loads(line) for line in (SAMPLE_DATA / "dev-reasoning-v2.jsonl").read_bytes().splitlines()[:30]]
    created = TraceBatchCreateResponse.model_validate(
        client.post("/api/traces/batch?wait=30", json=traces).raise_for_status().json()
    )

    first = TraceListResponse.model_validate(client.get("/api/traces", params={"limit": 30}).json())
    page = client.get(f"/api/batches/{created.traces[0].id}/traces")

    assert [item.id for item in first.data] == [made.id for made in reversed(created.traces)]
    assert page.status_code == 404  # a trace id is no batch id
    assert first.pagination.limit == 30 and first.pagination.offset == 0


def test_a_batchs_traces_read_back_in_position_order(client: httpx.Client) -> None:
    traces = [json.loads(line) for line in (SAMPLE_DATA / "dev-reasoning-v2.jsonl").read_bytes().splitlines()[:12]]
    batch_id = "0b8e4d3e-6f7a-4c1b-9d2e-3f4a5b6c7d8e"
    posted = client.post("/api/traces/batch?wait=30", json=traces, headers={"Idempotency-Key": batch_id})
    created = TraceBatchCreateResponse.model_validate(posted.raise_for_status().json())

    page = client.get(f"/api/batches/{batch_id}/traces", params={"limit": 1000}).json()

    assert page["state"] == "ingested" and page["trace_count"] == 12 and page["pagination"]["next_offset"] is None
    assert [item["id"] for item in page["data"]] == [str(made.id) for made in created.traces]
    assert [TraceDetail.model_validate(item).payload.model_dump() for item in page["data"]] == [
        {"meta": None, **trace} for trace in traces
    ]
