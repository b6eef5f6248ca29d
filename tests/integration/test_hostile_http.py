"""Hostile bodies at the HTTP API (PRODUCT.md §4b, §8.12), in this process (the app on httpx's ASGI transport,
real Redis behind it): huge integers, floats of 1e300 and deep nesting answer the tunix-rt backend's 4xx shapes
(numbered lines for JSON Lines), a JSON Lines flood answers its first problems and a count, and the route's memory
stays bounded at its body cap."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from worker.http_api import create_app
from worker.http_api.jsonl_upload import MAX_REPORTED_PROBLEMS
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment

TOKEN = "hostile-input-token"
#: Small batches, so that "about two batches' bytes" is a bound a test can tell from a leak.
BATCH_BYTES = 64 * 1024
JSONL_CAP = 1024 * 1024
#: A bad line of 100 bytes with its newline.
BAD_LINE = b"{not json" + b"x" * 90 + b"}\n"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app without its lifespan: every answer here comes before a route needs the database."""
    settings = {"INGEST_MAX_BATCH_BYTES": str(BATCH_BYTES), "INGEST_MAX_JSONL_BYTES": str(JSONL_CAP)}
    with environment(INGEST_API_TOKENS=TOKEN, **settings):
        transport = httpx.ASGITransport(app=create_app())
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as http:
            yield http


def trace_with_raw_meta(meta_json: str) -> bytes:
    (trace,) = generate_traces(1)
    trace.pop("meta", None)
    return orjson.dumps(trace)[:-1] + b',"meta":' + meta_json.encode() + b"}"


HUGE_INTEGER_TRACE = trace_with_raw_meta('{"tokens": ' + "9" * 5000 + "}")
#: A float PostgreSQL's jsonb would read back as an integer, not as the number sent.
HUGE_FLOAT_TRACE = trace_with_raw_meta('{"x": 1e300}')
GOOD_LINE = orjson.dumps(next(iter(generate_traces(1))))


async def test_a_batch_with_a_5000_digit_integer_is_422_naming_its_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/traces/batch", content=b"[" + HUGE_INTEGER_TRACE + b"]")

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", 0, "meta"] and "integer of 5000 digits" in problem["msg"]


@pytest.mark.parametrize("depth", [300, 1000, 3000])
async def test_a_batch_with_meta_nested_deeply_is_422_naming_its_field(client: httpx.AsyncClient, depth: int) -> None:
    deep = trace_with_raw_meta('{"k":' * depth + '"\\u0000"' + "}" * depth)

    response = await client.post("/api/traces/batch", content=b"[" + deep + b"]")

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", 0, "meta"]
    assert response.json()["detail"][0]["msg"].startswith("nesting is deeper than 32 levels")


async def test_a_batch_with_a_float_of_1e300_is_422_naming_its_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/traces/batch", content=b"[" + HUGE_FLOAT_TRACE + b"]")

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", 0, "meta"]
    assert problem["msg"].startswith("meta.x is a float of magnitude 1e16 or more")


async def problem_of_a_bad_second_line(client: httpx.AsyncClient, bad_line: bytes) -> str:
    """Upload a good line and `bad_line`: the good one is enqueued, and the bad one is the one problem, named by
    its number and field `meta`; its message."""
    response = await client.post("/api/traces/jsonl", content=GOOD_LINE + b"\n" + bad_line + b"\n")

    assert response.status_code == 202, response.text
    assert response.json()["trace_count"] == 1
    (problem,) = response.json()["invalid_lines"]
    assert (problem["line"], problem["field"]) == (2, "meta")
    return str(problem["message"])


async def test_a_jsonl_line_with_a_5000_digit_integer_is_named_by_number(client: httpx.AsyncClient) -> None:
    assert "5000 digits" in await problem_of_a_bad_second_line(client, HUGE_INTEGER_TRACE)


# Deeper than 3,000 levels a line passes this fixture's 64 KiB batch cap and is refused for its length instead.
@pytest.mark.parametrize("depth", [300, 1000, 3000])
async def test_a_jsonl_line_with_meta_nested_deeply_is_named_by_number(client: httpx.AsyncClient, depth: int) -> None:
    deep = trace_with_raw_meta('{"k":' * depth + '"\\u0000"' + "}" * depth)

    message = await problem_of_a_bad_second_line(client, deep)

    assert message.startswith("nesting is deeper than 32 levels")


async def test_a_jsonl_line_with_a_float_of_1e300_is_named_by_number(client: httpx.AsyncClient) -> None:
    message = await problem_of_a_bad_second_line(client, HUGE_FLOAT_TRACE)

    assert message.startswith("meta.x is a float of magnitude 1e16 or more")


async def test_a_flood_of_bad_lines_answers_the_first_problems_and_a_count(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/traces/jsonl", content=b"x\n" * 100_000)

    body = response.json()
    assert response.status_code == 202 and body["trace_count"] == 0
    assert body["invalid_line_count"] == 100_000 and len(body["invalid_lines"]) == MAX_REPORTED_PROBLEMS
    assert [problem["line"] for problem in body["invalid_lines"]] == list(range(1, MAX_REPORTED_PROBLEMS + 1))
    assert len(response.content) < 20_000


async def test_a_jsonl_body_past_its_cap_is_413_declared_or_streamed(client: httpx.AsyncClient) -> None:
    oversize = BAD_LINE * (JSONL_CAP // len(BAD_LINE) + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversize), 65536):
            yield oversize[start : start + 65536]

    declared = await client.post("/api/traces/jsonl", content=oversize)
    streamed = await client.post("/api/traces/jsonl", content=chunks())

    assert declared.status_code == 413 and declared.json()["lines"] == 0
    assert streamed.status_code == 413 and f"maximum of {JSONL_CAP} bytes" in streamed.json()["detail"]
    assert 0 < streamed.json()["invalid_line_count"] < JSONL_CAP // len(BAD_LINE)


async def test_a_jsonl_body_at_its_cap_costs_about_two_batches_of_memory(client: httpx.AsyncClient) -> None:
    """The traced peak of a body at the cap of bad lines (each reported, most only counted) stays within two
    batches' bytes and a fixed allowance, whatever the cap: it does not grow with the body."""
    body = BAD_LINE * (JSONL_CAP // len(BAD_LINE))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    tracemalloc.start()
    try:
        response = await client.post("/api/traces/jsonl", content=chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 202 and response.json()["invalid_line_count"] == JSONL_CAP // len(BAD_LINE)
    bound = 2 * BATCH_BYTES + 2 * 1024 * 1024
    assert peak < bound, f"traced peak {peak:,} bytes for a {len(body):,}-byte body (bound {bound:,})"


async def test_offsets_past_postgresqls_integers_are_422_not_500(client: httpx.AsyncClient) -> None:
    huge = str(2**64)

    answers = [
        await client.get(f"/api/traces?offset={huge}"),
        await client.get(f"/api/batches/{uuid.uuid4()}/traces?offset={huge}"),
    ]

    assert [answer.status_code for answer in answers] == [422, 422], [answer.text for answer in answers]
