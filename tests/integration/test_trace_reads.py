"""The read routes (PRODUCT.md §4b reads) in this process: the app on httpx's ASGI transport with its lifespan
running, batches stored through the ingest service into the real PostgreSQL. Every answer is parsed with the
tunix-rt backend's own response models (UUID ids), and every id handed out is read back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.trace_ids import trace_row_id, trace_uuid
from services.ingest import ingest_batch
from services.validation import BatchIn, validate_traces
from tests.backend_models import TraceDetail, TraceListResponse
from tests.streams import STREAM
from worker.edge.publisher import RedisStreamPublisher
from worker.http_api import create_app
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment

TOKEN = "read-routes-token"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    with environment(INGEST_API_TOKENS=TOKEN):
        app = create_app()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as http:
                yield http


async def store(
    sessions: async_sessionmaker[AsyncSession], redis_url: str, traces: list[dict[str, Any]]
) -> tuple[uuid.UUID, list[int]]:
    """Store `traces` as one batch through the ingest service; (its id, its row ids in position order)."""
    valid = validate_traces(traces, max_batch=1000, max_bytes=8 * 1024 * 1024)
    batch = BatchIn(uuid.uuid4(), "tests", valid)
    redis = Redis.from_url(redis_url)
    try:
        async with sessions() as session:
            result = await ingest_batch(session, batch, publisher=RedisStreamPublisher(redis, STREAM, 1000))
    finally:
        await redis.aclose()
    return batch.batch_id, list(result.ids)


def as_posted(trace: dict[str, Any]) -> dict[str, Any]:
    """A trace as the backend's `ReasoningTrace` dumps it (`meta` null when none was sent)."""
    return {"meta": None, **trace}


async def walk(client: httpx.AsyncClient, *, by_cursor: bool = False, **params: Any) -> list[TraceListResponse]:
    """Every page of the list, following `next_cursor` (by_cursor) or else `next_offset`."""
    pages = []
    while True:
        response = await client.get("/api/traces", params=params)
        assert response.status_code == 200, response.text
        pages.append(TraceListResponse.model_validate(response.json()))
        following = "cursor" if by_cursor else "offset"
        params[following] = response.json()["pagination"][f"next_{following}"]
        if params[following] is None:
            return pages


async def test_every_listed_trace_reads_back_by_its_uuid_as_the_backends_trace_detail(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    traces = list(generate_traces(7))
    traces[3].pop("meta", None)
    await store(sessions, redis_url, traces)

    listed = TraceListResponse.model_validate((await client.get("/api/traces")).json())
    assert len(listed.data) == 7
    details = []
    for item in listed.data:
        response = await client.get(f"/api/traces/{item.id}")
        assert response.status_code == 200, response.text
        details.append(TraceDetail.model_validate(response.json()))
        assert set(response.json()) == {"id", "created_at", "trace_version", "payload"}

    assert [detail.id for detail in details] == [item.id for item in listed.data]
    assert [detail.created_at for detail in details] == [item.created_at for item in listed.data]
    assert [detail.payload.model_dump() for detail in reversed(details)] == [as_posted(t) for t in traces]
    assert all(detail.trace_version == detail.payload.trace_version for detail in details)


async def test_a_trace_reads_back_by_its_plain_row_id_too(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    _, (row_id,) = await store(sessions, redis_url, list(generate_traces(1)))

    by_row_id = await client.get(f"/api/traces/{row_id}")
    by_uuid = await client.get(f"/api/traces/{trace_uuid(row_id)}")

    assert by_row_id.status_code == 200 and by_row_id.json() == by_uuid.json()
    assert by_row_id.json()["id"] == str(trace_uuid(row_id))


async def test_the_list_is_newest_first_in_the_backends_pages_and_ends_with_a_null_next_offset(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    _, older = await store(sessions, redis_url, list(generate_traces(5, seed=1)))
    _, newer = await store(sessions, redis_url, list(generate_traces(4, seed=2)))

    pages = await walk(client, limit=4, offset=0)

    assert [page.pagination.model_dump() for page in pages] == [
        {"limit": 4, "offset": 0, "next_offset": 4},
        {"limit": 4, "offset": 4, "next_offset": 8},
        {"limit": 4, "offset": 8, "next_offset": None},
    ]
    listed = [trace_row_id(item.id) for page in pages for item in page.data]
    assert listed == sorted(older + newer, reverse=True)
    default = (await client.get("/api/traces")).json()["pagination"]
    assert default == {"limit": 20, "offset": 0, "next_offset": None, "next_cursor": None}


async def test_the_cursor_walks_every_trace_once_newest_first_like_the_offsets_do(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    for seed in range(3):
        await store(sessions, redis_url, list(generate_traces(6, seed=seed)))

    by_cursor = await walk(client, by_cursor=True, limit=5)
    by_offset = await walk(client, limit=5, offset=0)
    newest_first = [item.id for page in by_offset for item in page.data]
    from_cursor = await client.get("/api/traces", params={"limit": 5, "offset": 2, "cursor": str(newest_first[9])})

    assert [page.data for page in by_cursor] == [page.data for page in by_offset]
    assert len(newest_first) == len(set(newest_first)) == 18 and len(by_cursor) == 4
    # With a cursor, the offset counts from it: traces 12 to 16 of the newest-first list.
    assert [item["id"] for item in from_cursor.json()["data"]] == [str(i) for i in newest_first[12:17]]
    assert from_cursor.json()["pagination"]["next_offset"] == 7


async def test_out_of_range_limits_and_offsets_are_422_in_the_backends_words(client: httpx.AsyncClient) -> None:
    answers = {
        params: await client.get("/api/traces", params=dict([params]))
        for params in [("limit", 0), ("limit", 101), ("offset", -1)]
    }
    not_a_number = await client.get("/api/traces", params={"limit": "many"})

    assert {params: (r.status_code, r.json()) for params, r in answers.items()} == {
        ("limit", 0): (422, {"detail": "limit must be between 1 and 100"}),
        ("limit", 101): (422, {"detail": "limit must be between 1 and 100"}),
        ("offset", -1): (422, {"detail": "offset must be non-negative"}),
    }
    assert not_a_number.status_code == 422
    assert not_a_number.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_an_unknown_trace_is_404_and_an_id_that_is_no_uuid_is_422_as_the_backend_answers(
    client: httpx.AsyncClient,
) -> None:
    foreign, unstored = uuid.uuid4(), trace_uuid(10**12)

    assert (await client.get(f"/api/traces/{foreign}")).json() == {"detail": f"Trace {foreign} not found"}
    assert (await client.get(f"/api/traces/{unstored}")).status_code == 404
    assert (await client.get("/api/traces/99999999999999999999")).status_code == 422  # 20 digits: not ours
    assert (await client.get(f"/api/traces/{2**63}")).json() == {"detail": f"Trace {2**63} not found"}
    assert (await client.get(f"/api/traces/{2**63 - 1}")).json() == {"detail": f"Trace {2**63 - 1} not found"}
    not_uuid = await client.get("/api/traces/not-a-uuid")
    assert not_uuid.status_code == 422
    (problem,) = not_uuid.json()["detail"]
    assert (problem["type"], problem["loc"], problem["input"]) == ("uuid_parsing", ["path", "trace_id"], "not-a-uuid")
    bad_cursor = await client.get("/api/traces", params={"cursor": str(foreign)})
    assert (bad_cursor.status_code, bad_cursor.json()) == (422, {"detail": "cursor must be a trace id from this API"})
    assert (await client.get("/api/traces", params={"cursor": "x"})).json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_a_batchs_traces_come_in_position_order_page_by_page_with_their_payloads(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    traces = list(generate_traces(25))
    batch_id, row_ids = await store(sessions, redis_url, traces)
    await store(sessions, redis_url, list(generate_traces(3, seed=7)))  # another batch stays out

    pages = [
        (await client.get(f"/api/batches/{batch_id}/traces", params={"limit": 10, "offset": offset})).json()
        for offset in (0, 10, 20)
    ]

    assert [page["pagination"]["next_offset"] for page in pages] == [10, 20, None]
    assert {(page["batch_id"], page["state"], page["trace_count"]) for page in pages} == {
        (str(batch_id), "ingested", 25)
    }
    items = [item for page in pages for item in page["data"]]
    assert [item["position"] for item in items] == list(range(25))
    assert [trace_row_id(TraceDetail.model_validate(item).id) for item in items] == row_ids
    assert [item["payload"] for item in items] == [as_posted(trace) for trace in traces]
    first = await client.get(f"/api/traces/{items[0]['id']}")
    assert {**first.json(), "position": 0} == items[0]


async def test_a_batch_that_is_not_stored_is_404_and_bad_pages_are_422(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()

    answer = await client.get(f"/api/batches/{missing}/traces")

    assert (answer.status_code, answer.json()) == (404, {"detail": f"Batch {missing} not found"})
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert (await client.get(f"/api/batches/{missing}/traces", params=params)).status_code == 422


async def test_the_read_routes_refuse_a_missing_or_wrong_token(client: httpx.AsyncClient) -> None:
    paths = ["/api/traces", f"/api/traces/{trace_uuid(1)}", f"/api/batches/{uuid.uuid4()}/traces"]
    for path in paths:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
            response = await client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)


async def test_openapi_documents_every_read_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert paths["/api/traces/{trace_id}"]["get"]["responses"]["200"]["content"]
    assert {parameter["name"] for parameter in paths["/api/traces"]["get"]["parameters"]} == {
        "limit",
        "offset",
        "cursor",
    }
    assert "get" in paths["/api/batches/{batch_id}/traces"]
