"""Measuring the HTTP enqueue API (PRODUCT.md §4b) through a real uvicorn process: its enqueue rate with
several concurrent clients, and how long `?wait` takes at a moderate load."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Any

import httpx
import orjson

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


def wait_latency_ms(url: str, batches: list[list[dict[str, Any]]], rate: float) -> dict[str, float]:
    """POST `batches` with `?wait` at `rate` traces/s; how long each request took until its `201`."""
    bodies = [orjson.dumps(batch) for batch in batches]
    interval = len(batches[0]) / rate

    async def post(http: httpx.AsyncClient, body: bytes) -> float:
        started = time.perf_counter()
        answer = await http.post("/api/traces/batch", params={"wait": 30}, content=body, headers=_JSON)
        if answer.status_code != 201:
            raise RuntimeError(f"the API answered {answer.status_code}: {answer.text[:200]}")
        return (time.perf_counter() - started) * 1000

    async def run() -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            loop = asyncio.get_running_loop()
            first = loop.time()
            requests = []
            for index, body in enumerate(bodies):
                await asyncio.sleep(max(0.0, first + index * interval - loop.time()))
                requests.append(asyncio.create_task(post(http, body)))
            return sorted(await asyncio.gather(*requests))

    latencies = asyncio.run(run())
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[max(0, math.ceil(len(latencies) * 0.99) - 1)],
        "batches": len(latencies),
    }
