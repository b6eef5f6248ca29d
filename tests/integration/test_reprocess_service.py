"""Reprocessing against real PostgreSQL and Redis: the outbox sweep, parked batches and re-drive, and the
derived-field refresh."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import derived
from models.tables import Batch, Trace
from services.delivery.deliver import ingest_message
from services.delivery.parked_rows import RAW_PAYLOAD_CAP
from services.delivery.parking import park_failed_message
from services.delivery.parsing import Limits
from services.errors import PublishFailed
from services.ingest import ingest_batch
from services.reports import get_batch_status, store_totals
from services.reprocess import (
    count_stale_traces,
    find_failed_batches,
    publish_unpublished_batches,
    redrive_batch,
    refresh_stale_derived_chunk,
)
from services.validation import BatchIn, validate_traces
from tests.streams import STREAM, stream_events
from worker.edge.publisher import RedisStreamPublisher
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces

LIMITS = Limits(max_batch=1000, max_bytes=8 * 1024 * 1024, max_deliveries=5)


def message(count: int = 5, seed: int = 1) -> dict[str, Any]:
    return {"batch_id": str(uuid.uuid4()), "source": "tests", "traces": list(generate_traces(count, seed=seed))}


@pytest.fixture
async def publisher(redis_url: str) -> Any:
    client = Redis.from_url(redis_url)
    yield RedisStreamPublisher(client, STREAM, 10_000)
    await client.aclose()


@pytest.fixture
async def broken_publisher() -> Any:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    yield RedisStreamPublisher(client, STREAM, 100)
    await client.aclose()


async def test_sweep_publishes_only_old_enough_unpublished_batches_once(
    sessions: async_sessionmaker[AsyncSession], publisher: Any, broken_publisher: Any, redis_url: str
) -> None:
    for seed in range(3):
        async with sessions() as session:
            await ingest_message(session, message(seed=seed), publisher=broken_publisher, limits=LIMITS, attempts=1)
    async with sessions() as session:
        assert await publish_unpublished_batches(session, publisher=publisher, older_than=timedelta(hours=1)) == 0
        assert await publish_unpublished_batches(session, publisher=publisher, older_than=timedelta(0)) == 3
        assert await publish_unpublished_batches(session, publisher=publisher, older_than=timedelta(0)) == 0
        assert (await store_totals(session)).unpublished_batches == 0
        assert await session.scalar(select(func.count()).select_from(Trace)) == 15
    events = stream_events(redis_url)
    assert len(events) == 3
    assert all(len(json.loads(e["ids"])) == 5 for e in events)


async def test_poison_message_is_kept_as_rejected_with_storable_errors_and_payload(
    sessions: async_sessionmaker[AsyncSession], publisher: Any
) -> None:
    poison = {"batch_id": "not-a-uuid", "source": "x\x00y", "traces": [{"prompt": "\x00", "bad\x00key": 1}]}
    async with sessions() as session:
        first = await ingest_message(session, poison, publisher=publisher, limits=LIMITS, attempts=1)
    async with sessions() as session:
        again = await ingest_message(session, poison, publisher=publisher, limits=LIMITS, attempts=2)
        status = await get_batch_status(session, first.batch_id)
        raw = await session.scalar(select(Batch.raw_payload).where(Batch.id == first.batch_id))
    assert first.state == again.state == "rejected" and again.batch_id == first.batch_id
    assert status is not None and status.state == "rejected" and status.attempts == 1
    assert any(e["field_path"] == "batch_id" for e in status.errors)
    assert raw is not None and json.loads(raw) == poison


async def test_parked_batch_is_redriven_once_per_call_and_then_stored(
    sessions: async_sessionmaker[AsyncSession], publisher: Any
) -> None:
    original = message(count=7)
    async with sessions() as session:
        parked = await park_failed_message(session, original, reason="DB away", attempts=9, limits=LIMITS)
    assert parked.state == "failed"
    sent: list[dict[str, Any]] = []

    async def resend(payload: dict[str, Any]) -> None:
        sent.append(payload)

    async with sessions() as session:
        assert await find_failed_batches(session) == [uuid.UUID(original["batch_id"])]
        assert await redrive_batch(session, parked.batch_id, resend=resend, max_redrives=1)
    async with sessions() as session:
        assert not await redrive_batch(session, parked.batch_id, resend=resend, max_redrives=1)
    assert sent == [original]

    async with sessions() as session:
        stored = await ingest_message(session, sent[0], publisher=publisher, limits=LIMITS, attempts=1)
        status = await get_batch_status(session, parked.batch_id)
    assert stored.state == "ingested" and stored.count == 7
    assert status is not None and status.state == "ingested" and status.errors == [] and status.redrives == 1
    async with sessions() as session:
        assert not await redrive_batch(session, parked.batch_id, resend=resend, max_redrives=5)


async def test_too_many_deliveries_park_the_batch_instead_of_looping(
    sessions: async_sessionmaker[AsyncSession], publisher: Any
) -> None:
    looping = message()
    async with sessions() as session:
        result = await ingest_message(session, looping, publisher=publisher, limits=LIMITS, attempts=6)
        status = await get_batch_status(session, result.batch_id)
    assert result.state == "failed"
    assert status is not None and status.attempts == 6 and "delivered 6 times" in status.errors[0]["message"]


async def test_reused_batch_id_with_other_content_is_reported_as_conflict(
    sessions: async_sessionmaker[AsyncSession], publisher: Any
) -> None:
    first = message(seed=1)
    clash = {**message(seed=2), "batch_id": first["batch_id"]}
    async with sessions() as session:
        await ingest_message(session, first, publisher=publisher, limits=LIMITS, attempts=1)
    async with sessions() as session:
        result = await ingest_message(session, clash, publisher=publisher, limits=LIMITS, attempts=1)
    assert result.state == "conflict" and "different traces" in result.errors[0]["message"]


async def test_version_bump_refreshes_exactly_the_stale_rows_chunk_by_chunk(
    sessions: async_sessionmaker[AsyncSession], publisher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def store(count: int, seed: int) -> uuid.UUID:
        valid = validate_traces(list(generate_traces(count, seed=seed)), max_batch=1000, max_bytes=1 << 23)
        batch = BatchIn(uuid.uuid4(), "tests", valid)
        async with sessions() as session:
            await ingest_batch(session, batch, publisher=publisher)
        return batch.batch_id

    old_batch = await store(250, seed=1)
    original_stored_row = derived.stored_row
    monkeypatch.setattr(derived, "DERIVATION_VERSION", derived.DERIVATION_VERSION + 1)
    monkeypatch.setattr(derived, "stored_row", lambda trace: original_stored_row(trace)._replace(total_chars=-1))
    new_batch = await store(40, seed=2)  # stored under the new version: not stale

    async with sessions() as session:
        assert await count_stale_traces(session) == 250
    chunks, after_id = [], 0
    while True:
        async with sessions() as session:  # one session per chunk, as one task per chunk would
            chunk = await refresh_stale_derived_chunk(session, chunk_size=100, after_id=after_id)
        chunks.append(chunk.refreshed)
        if chunk.next_after_id is None:
            break
        assert chunk.next_after_id > after_id  # keyset: each chunk starts where the last one ended
        after_id = chunk.next_after_id

    assert chunks == [100, 100, 50]
    async with sessions() as session:
        rows = await session.execute(
            select(Trace.batch_id, func.count())
            .where(Trace.derivation_version == derived.DERIVATION_VERSION)
            .group_by(Trace.batch_id)
        )
        versions = dict(rows.all())
        assert versions == {old_batch: 250, new_batch: 40}
        assert await session.scalar(select(func.count()).where(Trace.total_chars != -1)) == 0


async def test_status_of_an_unknown_batch_is_none(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        assert await get_batch_status(session, uuid.uuid4()) is None


async def test_a_hand_crafted_oversize_message_is_rejected_keeping_only_a_capped_prefix_of_its_payload(
    sessions: async_sessionmaker[AsyncSession], publisher: Any
) -> None:
    huge = {"batch_id": str(uuid.uuid4()), "source": "tests", "traces": list(generate_traces(400, padding=300))}
    async with sessions() as session:
        result = await ingest_message(
            session, huge, publisher=publisher, limits=LIMITS._replace(max_bytes=100_000), attempts=1
        )
        raw = await session.scalar(select(Batch.raw_payload).where(Batch.id == result.batch_id))
    assert result.state == "rejected" and "exceeds maximum" in result.errors[0]["message"]
    assert raw is not None and len(raw) == RAW_PAYLOAD_CAP < len(json.dumps(huge))
    assert raw.startswith('{"batch_id": "')


async def test_the_sweep_stops_at_the_first_event_that_does_not_go_out(
    sessions: async_sessionmaker[AsyncSession], broken_publisher: Any
) -> None:
    """Redis away, or its replicas not confirming (each try then waits for them): one try per sweep, not one
    per unpublished batch, so a sweep ends well inside its time limit; the next sweep tries again."""
    for seed in range(3):
        async with sessions() as session:
            await ingest_message(session, message(seed=seed), publisher=broken_publisher, limits=LIMITS, attempts=1)
    tried: list[dict[str, str]] = []

    class Unconfirmed:
        async def publish(self, fields: dict[str, str]) -> None:
            tried.append(fields)
            raise PublishFailed("the event reached 0 of 1 Redis replicas within 2000 ms")

    async with sessions() as session:
        assert await publish_unpublished_batches(session, publisher=Unconfirmed(), older_than=timedelta(0)) == 0
        assert (await store_totals(session)).unpublished_batches == 3
    assert len(tried) == 1
