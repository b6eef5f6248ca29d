"""The HTTP enqueue API (PRODUCT.md §4b) as a client sees it: a real `tunix-ingest serve` (uvicorn) process,
real PostgreSQL and Redis, and a real `celery worker`. First the tunix-rt backend's own batch-endpoint cases, then
every route and status code."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from models.trace_ids import trace_row_id, trace_uuid
from tests.conftest import SAMPLE_DATA
from tests.db import as_received, query, scalar
from tests.e2e.commands import cli
from tests.e2e.http_servers import ApiServer
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from worker.http_api import create_app
from worker.http_api.traces import IDEMPOTENCY_NAMESPACE
from worker.localstack.ports import free_port
from worker.settings import environment


def backend_trace(n: int, **changes: Any) -> dict[str, Any]:
    """A trace as the tunix-rt backend's tests build them."""
    trace: dict[str, Any] = {
        "trace_version": "1.0",
        "prompt": f"What is {n} + {n}?",
        "final_answer": str(2 * n),
        "steps": [{"i": 0, "type": "compute", "content": f"{n} + {n} = {2 * n}"}],
        "meta": {"n": n},
    }
    trace.update(changes)
    return trace


@pytest.fixture(scope="module")
def api(service_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def held_api(service_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """An API whose batches go to a queue no worker reads, limited to one waiting batch."""
    server = ApiServer(
        tmp_path_factory.mktemp("held-api"), {"INGEST_QUEUE": "held", "INGEST_MAX_QUEUE_DEPTH": "1"}
    ).start()
    yield server
    server.stop()


#: The module's worker once a test started it; it outlives the test, and so may what a test left it to do.
_module_workers: list[WorkerProcess] = []


@pytest.fixture(scope="module")
def ingest_worker(service_environment: None) -> Iterator[WorkerProcess]:
    worker = WorkerProcess("http").start()
    _module_workers.append(worker)
    yield worker
    _module_workers.remove(worker)
    worker.stop()


@pytest.fixture(autouse=True)
def _nothing_left_to_land(redis_url: str) -> Iterator[None]:
    """After each test, the module's worker (if running) has finished every batch the test left queued (202 and
    not waited for): one landing after the next test emptied the tables would be counted by that test."""
    yield
    if _module_workers:
        client = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: client.llen("ingest") == 0 and client.hlen("unacked") == 0,
            what="the queued batches done",
            explain=lambda: (
                f"queued {client.llen('ingest')}, unacked {client.hlen('unacked')}, worker running "
                f"{all(worker.running() for worker in _module_workers)}"
            ),
        )


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as http:
        yield http


def stored_rows(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM trace"))


def queued(redis_url: str, queue: str = "ingest") -> int:
    return int(redis.Redis.from_url(redis_url).llen(queue))


# --- The tunix-rt backend's batch-endpoint cases ----------------------------------------------------------------


def test_backend_batch_success_answers_the_backends_201_body_in_input_order(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    traces = [backend_trace(n) for n in range(5)]
    response = client.post("/api/traces/batch", params={"wait": 30}, json=traces)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"created_count", "traces"} and body["created_count"] == 5
    rows = query(database_url, "SELECT id, position, created_at, prompt FROM trace ORDER BY position")
    assert [trace["id"] for trace in body["traces"]] == [str(trace_uuid(row.id)) for row in rows]
    assert [row.prompt for row in rows] == [trace["prompt"] for trace in traces]
    for answered, row in zip(body["traces"], rows, strict=True):
        assert set(answered) == {"id", "created_at", "trace_version"} and answered["trace_version"] == "1.0"
        assert datetime.fromisoformat(answered["created_at"]) == row.created_at


def test_backend_single_trace_batch_is_created(client: httpx.Client, ingest_worker: WorkerProcess) -> None:
    response = client.post("/api/traces/batch?wait=30", json=[backend_trace(1)])

    assert response.status_code == 201 and response.json()["created_count"] == 1


def test_backend_empty_batch_is_400_with_the_backends_message(client: httpx.Client, redis_url: str) -> None:
    response = client.post("/api/traces/batch", json=[])

    assert response.status_code == 400
    assert response.json() == {"detail": "Batch must contain at least one trace"}
    assert queued(redis_url) == 0


def test_backend_batch_of_1001_is_400_with_the_backends_message(client: httpx.Client, redis_url: str) -> None:
    response = client.post("/api/traces/batch", json=[backend_trace(n) for n in range(1001)])

    assert response.status_code == 400
    assert response.json() == {"detail": "Batch size (1001) exceeds maximum (1000)"}
    assert queued(redis_url) == 0


def test_backend_missing_field_is_422_naming_trace_and_field(client: httpx.Client, redis_url: str) -> None:
    traces = [backend_trace(0), backend_trace(1)]
    del traces[1]["final_answer"]
    response = client.post("/api/traces/batch", json=traces)

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", 1, "final_answer"], "msg": "Field required", "type": "missing"}
    ]
    assert queued(redis_url) == 0


def test_backend_metadata_round_trips(client: httpx.Client, ingest_worker: WorkerProcess, database_url: str) -> None:
    meta = {"dataset": "gsm8k", "tags": ["arith", "ünïcode ✓"], "nested": {"depth": 2, "ok": True, "none": None}}
    response = client.post("/api/traces/batch?wait=30", json=[backend_trace(3, meta=meta)])

    assert response.status_code == 201
    assert query(database_url, "SELECT meta FROM trace")[0].meta == meta


def test_backend_empty_prompt_is_422_and_writes_no_row(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str, redis_url: str
) -> None:
    response = client.post("/api/traces/batch?wait=5", json=[backend_trace(0), backend_trace(1, prompt="")])

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", 1, "prompt"] and problem["type"] == "string_too_short"
    assert queued(redis_url) == 0
    assert stored_rows(database_url) == 0 and scalar(database_url, "SELECT count(*) FROM batch") == 0


# --- Receipts, waiting, idempotency, source ---------------------------------------------------------------------


def test_a_batch_is_acknowledged_202_with_a_receipt_whose_status_url_follows_it(
    client: httpx.Client, ingest_worker: WorkerProcess
) -> None:
    response = client.post("/api/traces/batch", json=[backend_trace(n) for n in range(3)])

    assert response.status_code == 202
    receipt = response.json()
    assert receipt["trace_count"] == 3 and receipt["status_url"] == f"/api/batches/{receipt['batch_id']}"
    status = wait_for(
        lambda: (found := client.get(receipt["status_url"]).json()).get("state") == "ingested" and found,
        what="the batch's status to say ingested",
    )
    assert status["stored_traces"] == 3 and status["source"] == "http"


def test_wait_answers_202_when_the_batch_is_not_stored_in_time(held_api: ApiServer, redis_url: str) -> None:
    started = time.monotonic()
    response = httpx.post(f"{held_api.url}/api/traces/batch?wait=1.5", json=[backend_trace(1)], timeout=30)

    assert response.status_code == 202 and 1.5 <= time.monotonic() - started < 10
    assert queued(redis_url, "held") == 1
    status = httpx.get(f"{held_api.url}{response.json()['status_url']}")
    assert status.status_code == 200 and status.json()["state"] == "queued"


def test_wait_beyond_60_seconds_is_refused(client: httpx.Client) -> None:
    assert client.post("/api/traces/batch?wait=61", json=[backend_trace(1)]).status_code == 422


def test_a_retried_post_with_an_idempotency_key_stores_one_copy(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    traces = [backend_trace(n) for n in range(4)]
    headers = {"Idempotency-Key": "upload-2026-12-01-part-7"}
    first = client.post("/api/traces/batch?wait=30", json=traces, headers=headers)
    second = client.post("/api/traces/batch?wait=30", json=traces, headers=headers)

    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert stored_rows(database_url) == 4
    expected = uuid.uuid5(IDEMPOTENCY_NAMESPACE, "upload-2026-12-01-part-7")
    assert query(database_url, "SELECT id FROM batch")[0].id == expected


def test_a_uuid_idempotency_key_is_the_batch_id_and_other_content_under_it_is_409(
    client: httpx.Client, redis_url: str
) -> None:
    key = str(uuid.uuid4())
    first = client.post("/api/traces/batch", json=[backend_trace(1)], headers={"Idempotency-Key": key})
    other = client.post("/api/traces/batch", json=[backend_trace(2)], headers={"Idempotency-Key": key})

    assert first.status_code == 202 and first.json()["batch_id"] == key
    assert other.status_code == 409 and key in other.json()["detail"]


def test_source_names_the_producer_and_a_bad_one_is_422(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    assert client.post("/api/traces/batch?wait=30&source=trainer-7", json=[backend_trace(1)]).status_code == 201
    assert query(database_url, "SELECT source FROM batch")[0].source == "trainer-7"

    bad = client.post("/api/traces/batch?source=" + "x" * 300, json=[backend_trace(1)])
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "source"]


def test_a_body_that_is_not_a_json_array_is_422_in_json(client: httpx.Client) -> None:
    not_json = client.post("/api/traces/batch", content=b"[{not json", headers={"Content-Type": "application/json"})
    not_array = client.post("/api/traces/batch", json={"traces": []})

    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"
    assert not_array.status_code == 422 and not_array.json()["detail"][0] == {
        "loc": ["body"],
        "msg": "the body must be a JSON array of traces",
        "type": "list_type",
    }


def test_a_trace_that_is_no_object_json_nested_too_deeply_and_an_empty_key_are_422(client: httpx.Client) -> None:
    not_object = client.post("/api/traces/batch", json=[backend_trace(1), 7])
    too_deep = client.post("/api/traces/batch", content=b"[" * 5000 + b"]" * 5000)
    empty_key = client.post("/api/traces/batch", json=[backend_trace(1)], headers={"Idempotency-Key": ""})
    deep_line = client.post("/api/traces/jsonl", content=json.dumps(backend_trace(1)).encode() + b"\n" + b"[" * 5000)

    assert not_object.status_code == 422 and not_object.json()["detail"][0]["loc"] == ["body", 1]
    assert too_deep.status_code == 422 and too_deep.json()["detail"][0]["type"] == "json_invalid"
    assert empty_key.status_code == 422 and empty_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert deep_line.status_code == 202 and deep_line.json()["trace_count"] == 1
    assert deep_line.json()["invalid_lines"] == [
        {"line": 2, "field": None, "message": "not valid JSON here: nested too deeply"}
    ]


def test_the_real_sample_set_through_http_is_stored_losslessly(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    raw = (SAMPLE_DATA / "dev-reasoning-v2.jsonl").read_bytes().splitlines()
    traces = [json.loads(line) for line in raw]
    created = []
    for start in range(0, len(traces), 100):
        response = client.post("/api/traces/batch?wait=30&source=dev-reasoning-v2", json=traces[start : start + 100])
        assert response.status_code == 201, response.text
        created += [trace_row_id(uuid.UUID(trace["id"])) for trace in response.json()["traces"]]

    rows = {row.id: row for row in query(database_url, "SELECT * FROM trace")}
    assert len(rows) == len(traces) == 550
    assert [as_received(rows[row_id]) for row_id in created] == traces


# --- JSON Lines -------------------------------------------------------------------------------------------------


def test_jsonl_is_split_into_batches_and_each_bad_line_is_named(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    lines = [json.dumps(backend_trace(n)) for n in range(2300)]
    lines[4] = "{not json"
    lines[1500] = json.dumps(backend_trace(1500, steps=[]))
    response = client.post("/api/traces/jsonl", content="\n".join(lines).encode() + b"\n\n")

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["lines"] == 2301 and body["trace_count"] == 2298
    assert [batch["trace_count"] for batch in body["batches"]] == [999, 999, 300]
    assert body["invalid_lines"][0]["line"] == 5 and body["invalid_lines"][0]["field"] is None
    assert body["invalid_lines"][1] == {
        "line": 1501,
        "field": "steps",
        "message": "List should have at least 1 item after validation, not 0",
    }
    wait_for(lambda: stored_rows(database_url) == 2298, timeout=60, what="every good line stored")


def test_the_backends_jsonl_fixture_that_its_batch_endpoint_rejects_is_accepted(
    client: httpx.Client, ingest_worker: WorkerProcess, database_url: str
) -> None:
    fixture = (SAMPLE_DATA / "e2e-ingest.jsonl").read_bytes()
    response = client.post("/api/traces/jsonl?source=e2e", content=fixture)

    assert response.status_code == 202 and response.json()["trace_count"] == 3
    wait_for(lambda: stored_rows(database_url) == 3, what="the fixture's traces stored")


def test_a_jsonl_upload_with_no_trace_is_400(client: httpx.Client) -> None:
    response = client.post("/api/traces/jsonl", content=b"\n\n")

    assert response.status_code == 400 and response.json() == {"detail": "Batch must contain at least one trace"}


# --- Backpressure, outages, size limits -------------------------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after_and_nothing_enqueued(held_api: ApiServer, redis_url: str) -> None:
    assert httpx.post(f"{held_api.url}/api/traces/batch", json=[backend_trace(1)]).status_code == 202
    refused = httpx.post(f"{held_api.url}/api/traces/batch", json=[backend_trace(2)])
    refused_lines = httpx.post(f"{held_api.url}/api/traces/jsonl", content=json.dumps(backend_trace(3)).encode())

    for response in (refused, refused_lines):
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1 and "at its limit" in response.json()["detail"]
    assert queued(redis_url, "held") == 1


def test_redis_down_is_503_with_the_batch_id_and_readyz_says_so(tmp_path: Path) -> None:
    server = ApiServer(tmp_path, {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).start()
    try:
        key = str(uuid.uuid4())
        response = httpx.post(
            f"{server.url}/api/traces/batch", json=[backend_trace(1)], headers={"Idempotency-Key": key}, timeout=30
        )
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
    finally:
        server.stop()

    assert response.status_code == 503 and response.json()["batch_id"] == key
    assert "retry" in response.json()["detail"] and "Traceback" not in server.log()
    assert ready.status_code == 503 and ready.json() == {"redis": "unreachable (ConnectionError)", "postgresql": "ok"}


def _raw_post(port: int, headers: list[str], chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """POST over a plain socket, sending `chunks` until the server answers; (the answer, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            ("\r\n".join(["POST /api/traces/batch HTTP/1.1", "Host: test", *headers]) + "\r\n\r\n").encode()
        )
        connection.setblocking(False)
        sent = 0
        for chunk in chunks:
            try:
                answer = connection.recv(65536)
            except BlockingIOError:
                answer = b""
            if answer:
                return answer, sent
            try:
                connection.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.05)
                continue
            sent += len(chunk)
            time.sleep(0.01)
        connection.setblocking(True)
        return connection.recv(65536), sent


def test_a_64_mib_upload_is_cut_off_at_413_before_it_is_read(api: ApiServer) -> None:
    mib = b" " * (1 << 20)
    declared, declared_sent = _raw_post(
        api.port, ["Content-Type: application/json", f"Content-Length: {64 << 20}"], iter([mib] * 64)
    )
    chunk = b"%x\r\n%s\r\n" % (len(mib), mib)
    streamed, streamed_sent = _raw_post(
        api.port, ["Content-Type: application/json", "Transfer-Encoding: chunked"], iter([chunk] * 64)
    )

    print(f"413 after {declared_sent:,} bytes (Content-Length) and {streamed_sent:,} bytes (chunked)")
    for answer in (declared, streamed):
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"exceeds the maximum of 8388608 bytes" in answer
    assert declared_sent <= 4 << 20  # answered from the header, not after reading the body
    assert streamed_sent <= 16 << 20  # answered once the limit was passed, not at the end


# --- Status, health, auth, docs ---------------------------------------------------------------------------------


def test_status_of_an_unknown_batch_is_404_and_of_a_malformed_id_422(client: httpx.Client) -> None:
    unknown = client.get(f"/api/batches/{uuid.uuid4()}")

    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("no batch ")
    assert client.get("/api/batches/not-a-uuid").status_code == 422


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"redis": "ok", "postgresql": "ok"}


def test_with_tokens_set_every_api_request_needs_one(tmp_path: Path) -> None:
    server = ApiServer(tmp_path, {"INGEST_API_TOKENS": "alpha-token, beta-token"}).start()
    try:
        url = f"{server.url}/api/traces/batch"
        missing = httpx.post(url, json=[backend_trace(1)])
        wrong = httpx.post(url, json=[backend_trace(1)], headers={"Authorization": "Bearer gamma-token"})
        right = httpx.post(url, json=[backend_trace(1)], headers={"Authorization": "Bearer beta-token"})
        status = httpx.get(f"{server.url}/api/batches/{uuid.uuid4()}")
        health = httpx.get(f"{server.url}/healthz")
    finally:
        server.stop()

    for refused in (missing, wrong, status):
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert right.status_code == 202 and health.status_code == 200
    assert "beta-token" not in server.log()


async def test_without_tokens_a_request_from_beyond_loopback_or_through_a_proxy_is_401() -> None:
    transport = httpx.ASGITransport(app=create_app())
    with environment(INGEST_API_ALLOW_ANONYMOUS="1"):  # even with the opt-in to anonymous calls
        async with httpx.AsyncClient(transport=transport, base_url="http://203.0.113.9:8000") as outside:
            response = await outside.post("/api/traces/batch", json=[backend_trace(1)])
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as proxied:
            relayed = await proxied.post(
                "/api/traces/batch", json=[backend_trace(1)], headers={"X-Forwarded-For": "198.51.100.4"}
            )

    for refused in (response, relayed):
        assert refused.status_code == 401 and "INGEST_API_TOKENS" in refused.json()["detail"]


def test_serve_refuses_to_listen_beyond_loopback_without_tokens() -> None:
    # It must refuse before binding anything: the test never listens beyond loopback.
    refused = cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), env={"INGEST_API_TOKENS": ""})  # noqa: S104

    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: refusing to serve the API on 0.0.0.0 without authentication")


def test_openapi_docs_describe_the_batch_body(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/api/traces/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "array" and body["items"] == {"$ref": "#/components/schemas/TraceIn"}
    assert "steps" in schema["components"]["schemas"]["TraceIn"]["properties"]
    assert {"201", "400", "413", "422", "429", "503"} <= set(schema["paths"]["/api/traces/batch"]["post"]["responses"])
