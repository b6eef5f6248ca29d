"""`GET /api/export.jsonl` in this process (the app on httpx's ASGI transport with its lifespan, the real
PostgreSQL behind it): follow's lines, streamed in slices, with the cursor that chains exports exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.exports import export, store
from tests.integration.test_export_parquet import awkward_traces
from worker.http_api import create_app, export_route
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment

TOKEN = "export-route-token"


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    with environment(INGEST_API_TOKENS=TOKEN):
        app = create_app()
        async with app.router.lifespan_context(app):
            yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as http:
        yield http


async def body_messages(app: FastAPI, path: str) -> list[bytes]:
    """GET `path` straight through ASGI (httpx's transport would join the body): each body message sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[MutableMapping[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays until the response ends
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    return [message.get("body", b"") for message in sent if message["type"] == "http.response.body"]


async def test_the_route_streams_the_lines_a_json_lines_export_writes(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await store(sessions, awkward_traces(), source="b")
    await store(sessions, list(generate_traces(300, padding=50)), source="a")
    manifest = await export(sessions, tmp_path / "out", form="jsonl")
    monkeypatch.setattr(export_route, "UNIT_BYTES", 4096)

    response = await client.get("/api/export.jsonl")
    chunks = await body_messages(app, "/api/export.jsonl")

    assert response.headers["content-type"] == "application/x-ndjson" and response.headers["export-rows"] == "305"
    assert len([chunk for chunk in chunks if chunk]) > 3  # streamed slice by slice
    assert response.content == b"".join(chunks)
    written = b"".join((tmp_path / "out" / exported.path).read_bytes() for exported in manifest.files)
    assert b"".join(chunks) == written  # the same lines, in the same order (source, day, batch, position)
    async with sessions() as session:
        left_open = await session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'"))
    assert left_open == 0


async def test_after_the_cursor_only_what_was_stored_since_comes_and_each_trace_once(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await store(sessions, list(generate_traces(3)))
    first = await client.get("/api/export.jsonl")
    newer = await store(sessions, list(generate_traces(2, seed=4)))
    second = await client.get("/api/export.jsonl", params={"after": first.headers["export-cursor"]})
    third = await client.get("/api/export.jsonl", params={"after": second.headers["export-cursor"]})

    assert [len(response.text.splitlines()) for response in (first, second, third)] == [3, 2, 0]
    assert all(f'"batch_id":"{newer}"' in line for line in second.text.splitlines())
    assert (second.headers["export-rows"], third.headers["export-rows"]) == ("2", "0")


async def test_filters_select_sources_batches_and_time_stored(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    a = await store(sessions, list(generate_traces(1)), source="a")
    b = await store(sessions, list(generate_traces(2)), source="b")
    await store(sessions, list(generate_traces(4)), source="c")

    by_source = await client.get("/api/export.jsonl", params=[("source", "a"), ("source", "b")])
    by_batch = await client.get("/api/export.jsonl", params={"batch": str(b), "since": "2000-01-01T00:00:00"})
    none_yet = await client.get("/api/export.jsonl", params={"until": "2000-01-01"})

    assert by_source.headers["export-rows"] == "3" and f'"batch_id":"{a}"' in by_source.text
    assert by_batch.headers["export-rows"] == "2" and f'"batch_id":"{a}"' not in by_batch.text
    assert (none_yet.status_code, none_yet.text) == (200, "")


async def test_a_bad_cursor_is_422_and_no_token_is_401(client: httpx.AsyncClient) -> None:
    garbage = await client.get("/api/export.jsonl", params={"after": "yesterday"})
    ahead = await client.get("/api/export.jsonl", params={"after": "99999999999:99999999999:"})
    past_xid8 = await client.get("/api/export.jsonl", params={"after": f"1:{2**64}:"})  # PostgreSQL's cast fails
    anonymous = await client.get("/api/export.jsonl", headers={"Authorization": ""})

    assert garbage.status_code == 422
    assert ahead.status_code == 422 and "ahead of this database" in ahead.json()["detail"]
    assert past_xid8.status_code == 422, past_xid8.text
    assert anonymous.status_code == 401


async def test_openapi_documents_the_route_its_filters_and_its_headers(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    route = schema["paths"]["/api/export.jsonl"]["get"]

    assert {parameter["name"] for parameter in route["parameters"]} == {"source", "batch", "since", "until", "after"}
    assert set(route["responses"]["200"]["headers"]) == {"Export-Cursor", "Export-Rows"}
    assert "application/x-ndjson" in route["responses"]["200"]["content"]
    assert route.get("security"), "the route is documented as needing the bearer token"


async def test_exports_past_the_cap_of_a_server_process_are_429_and_a_finished_one_frees_its_place(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.exports_running = export_route.MAX_CONCURRENT_EXPORTS  # as many as the cap are streaming

    refused = await client.get("/api/export.jsonl")
    app.state.exports_running -= 1
    served = await client.get("/api/export.jsonl")

    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert served.status_code == 200 and app.state.exports_running == export_route.MAX_CONCURRENT_EXPORTS - 1
