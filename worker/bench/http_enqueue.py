"""Measuring the HTTP enqueue API (PRODUCT.md §4b) through a real uvicorn process: its enqueue rate with
several concurrent clients, and how long `?wait` takes at a moderate load."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Any, cast
from uuid import UUID

import httpx
import orjson

from models.trace_ids import trace_row_id
from worker.redis_connect import connect

#: `?wait` requests sent before the measured ones: the first requests a server process handles make its
#: connections (Celery's producer pool, Redis's script cache), which the Python producer did earlier in the run.
WAIT_WARMUP = 5
#: Concurrent clients of the enqueue-rate figure: enough to keep one uvicorn process busy while others wait
#: for their answers.
HTTP_CLIENTS = 4
_JSON = {"Content-Type": "application/json"}


def http_enqueue_rate(url: str, batches: list[list[dict[str, Any]]], clients: int = HTTP_CLIENTS) -> float:
    """Traces per second the API at `url` accepts (202) from `clients` concurrent clients posting pre-encoded
    bodies, as producers in other processes would."""
    bodies = iter([orjson.dumps(batch) for batch in batches])

    async def client(http: httpx.AsyncClient) -> None:
        for body in bodies:  # one shared iterator: each body is posted once
            answer = await http.post("/api/traces/batch", content=body, headers=_JSON)
            if answer.status_code != 202:
                raise RuntimeError(f"the API answered {answer.status_code}: {answer.text[:200]}")

    async def run() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            started = time.perf_counter()
            await asyncio.gather(*[client(http) for _ in range(clients)])
            return time.perf_counter() - started

    return sum(len(batch) for batch in batches) / asyncio.run(run())


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


def _event_times(stream: str) -> dict[int, float]:
    """When each batch's event was appended (its stream id's milliseconds), by the batch's first row id."""
    redis = connect(decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], redis.xrange(stream))
    finally:
        redis.close()
    return {orjson.loads(fields["ids"])[0]: int(entry_id.split("-")[0]) / 1000 for entry_id, fields in entries}


def wait_latency_ms(url: str, batches: list[list[dict[str, Any]]], rate: float, stream: str) -> dict[str, float]:
    """POST `batches` with `?wait` at `rate` traces/s: how long each request took until its `201`, and how long
    after its batch's event was appended the `201` arrived (what waiting adds to enqueue→published). The first
    WAIT_WARMUP batches warm the server up and are not counted."""
    bodies = [orjson.dumps(batch) for batch in batches]
    warm_up_bodies, measured_bodies = bodies[:WAIT_WARMUP], bodies[WAIT_WARMUP:]
    interval = len(batches[0]) / rate

    async def post(http: httpx.AsyncClient, body: bytes) -> tuple[float, float, int]:
        started = time.time()
        answer = await http.post("/api/traces/batch", params={"wait": 30}, content=body, headers=_JSON)
        if answer.status_code != 201:
            raise RuntimeError(f"the API answered {answer.status_code}: {answer.text[:200]}")
        first_id = trace_row_id(UUID(answer.json()["traces"][0]["id"]))  # ids come in their UUID form
        if first_id is None:
            raise RuntimeError(f"the API answered a trace id of another store: {answer.text[:200]}")
        return started, time.time(), first_id

    async def run() -> list[tuple[float, float, int]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            loop = asyncio.get_running_loop()
            first = loop.time()
            requests = []
            for index, body in enumerate(measured_bodies):
                await asyncio.sleep(max(0.0, first + index * interval - loop.time()))
                requests.append(asyncio.create_task(post(http, body)))
            return await asyncio.gather(*requests)

    async def warm_up() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for body in warm_up_bodies:
                await post(http, body)

    asyncio.run(warm_up())
    answered = asyncio.run(run())
    published = _event_times(stream)
    p50, p99 = _percentiles([(done - started) * 1000 for started, done, _ in answered])
    after_p50, after_p99 = _percentiles([(done - published[first_id]) * 1000 for _, done, first_id in answered])
    return {
        "p50": p50,
        "p99": p99,
        "after_event_p50": after_p50,
        "after_event_p99": after_p99,
        "batches": len(answered),
    }
