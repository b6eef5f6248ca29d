"""The HTTP API's and the CLI's edges (issue #18), in process: the ASGI app with its lifespan, an in-process
worker, the real PostgreSQL and Redis. A batch id reused for other content once its key expired is recorded and
shown as a conflict; without tokens the API answers anonymous calls only with the explicit opt-in."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from models.tables import Batch
from worker import app, enqueue_batch
from worker.cli.batches import status
from worker.edge.runtime import stop_runtime
from worker.http_api import create_app
from worker.keys import batch_key
from worker.localstack.sample_traces import generate_traces
from worker.settings import environment

ANONYMOUS = {"INGEST_API_TOKENS": "", "INGEST_API_ALLOW_ANONYMOUS": "1"}


@asynccontextmanager
async def api_client() -> AsyncIterator[httpx.AsyncClient]:
    """The app as `serve` runs it (lifespan included), called as from this host's loopback."""
    api = create_app()
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", timeout=60) as client:
            yield client


@pytest.fixture
def in_process_worker() -> Iterator[None]:
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingest"], loglevel="WARNING"):
        yield
    stop_runtime()


def traces(count: int) -> list[dict[str, Any]]:
    return list(generate_traces(count))


def forget_batch_key(redis_url: str, batch_id: uuid.UUID | str) -> None:
    """What INGEST_BATCH_KEY_TTL_S does in the end: the producer no longer remembers the id's content."""
    redis.Redis.from_url(redis_url).delete(batch_key(uuid.UUID(str(batch_id))))


def stored_then_reused(redis_url: str) -> uuid.UUID:
    """A batch stored from "first", then its id reused by "reuser" for five other traces once its key expired."""
    batch_id = uuid.uuid4()
    first = enqueue_batch(traces(3), source="first", batch_id=batch_id)
    assert AsyncResult(first.task_id, app=app).get(timeout=30)["state"] == "ingested"
    forget_batch_key(redis_url, batch_id)
    reused = enqueue_batch(traces(5), source="reuser", batch_id=batch_id)
    assert AsyncResult(reused.task_id, app=app).get(timeout=30)["state"] == "conflict"
    return batch_id


async def test_a_batch_id_reused_after_its_key_expired_shows_the_conflict_in_its_status(
    in_process_worker: None, redis_url: str, engine: AsyncEngine
) -> None:
    batch_id = stored_then_reused(redis_url)
    with environment(**ANONYMOUS):
        async with api_client() as client:
            shown = (await client.get(f"/api/batches/{batch_id}")).json()

    assert (shown["state"], shown["source"], shown["trace_count"]) == ("ingested", "first", 3)  # left untouched
    (conflict,) = shown["conflicts"]
    assert (conflict["source"], conflict["trace_count"]) == ("reuser", 5)
    async with engine.connect() as connection:
        stored_hash = await connection.scalar(select(Batch.content_hash).where(Batch.id == batch_id))
    assert len(conflict["content_hash"]) == 64 and conflict["content_hash"] != stored_hash
    assert conflict["detected_at"]


async def test_wait_answers_409_when_a_reused_batch_id_ends_in_conflict(
    in_process_worker: None, redis_url: str
) -> None:
    key = str(uuid.uuid4())
    with environment(**ANONYMOUS):
        async with api_client() as client:
            url = "/api/traces/batch?wait=30"
            first = await client.post(url, json=traces(3), headers={"Idempotency-Key": key})
            forget_batch_key(redis_url, key)
            reused = await client.post(url, json=traces(5), headers={"Idempotency-Key": key})

    assert first.status_code == 201, first.text
    assert reused.status_code == 409, reused.text
    assert "different traces" in reused.json()["detail"]


def test_the_status_command_lists_the_conflicts_of_a_batch(in_process_worker: None, redis_url: str) -> None:
    batch_id = stored_then_reused(redis_url)

    shown = CliRunner().invoke(status, [str(batch_id)])
    as_json = CliRunner().invoke(status, [str(batch_id), "--json"])

    assert shown.exit_code == 0, shown.output
    conflict_lines = [line for line in shown.output.splitlines() if line.strip().startswith("conflict ")]
    assert len(conflict_lines) == 1 and "5 traces from reuser" in conflict_lines[0]
    assert as_json.exit_code == 0 and json.loads(as_json.output)["conflicts"][0]["source"] == "reuser"


async def test_without_tokens_or_the_opt_in_every_api_call_is_401_even_on_loopback() -> None:
    with environment(INGEST_API_TOKENS="", INGEST_API_ALLOW_ANONYMOUS="0"):
        async with api_client() as client:
            status_call = await client.get(f"/api/batches/{uuid.uuid4()}")
            batch_call = await client.post("/api/traces/batch", json=traces(1))
            health = await client.get("/healthz")
            ready = await client.get("/readyz")

    for refused in (status_call, batch_call):
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "INGEST_API_TOKENS" in refused.json()["detail"]
    assert health.status_code == ready.status_code == 200


async def test_with_the_anonymous_opt_in_the_api_answers_on_loopback_and_warns_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with environment(**ANONYMOUS), caplog.at_level(logging.WARNING):
        async with api_client() as client:
            unknown = await client.get(f"/api/batches/{uuid.uuid4()}")

    assert unknown.status_code == 404
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("INGEST_API_ALLOW_ANONYMOUS" in message for message in warnings), warnings
