"""The ingest service against real PostgreSQL and Redis: one transaction, commit, one bulk SELECT, publish."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from models.derived import DERIVATION_VERSION, derive
from models.tables import Batch, Trace
from services.errors import BatchConflict
from services.ingest import claim_batch, copy_traces, ingest_batch
from services.validation import BatchIn, validate_body, validate_traces
from tests.db import as_received
from tests.streams import STREAM, stream_events
from worker.edge.publisher import RedisStreamPublisher
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces


def make_batch(traces: list[dict[str, Any]], batch_id: uuid.UUID | None = None) -> BatchIn:
    valid = validate_traces(traces, max_batch=1000, max_bytes=8 * 1024 * 1024)
    return BatchIn(batch_id or uuid.uuid4(), "tests", valid)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def publisher(redis_client: Redis) -> RedisStreamPublisher:
    return RedisStreamPublisher(redis_client, STREAM, 10_000)


async def test_batch_is_stored_whole_and_announced_with_its_row_ids(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher, redis_url: str
) -> None:
    traces = list(generate_traces(25))
    batch = make_batch(traces)
    async with sessions() as session:
        result = await ingest_batch(session, batch, publisher=publisher)

    assert result.count == 25 and result.published
    async with sessions() as session:
        rows = (await session.scalars(select(Trace).order_by(Trace.position))).all()
        stored_batch = await session.get(Batch, batch.batch_id)
    assert [row.position for row in rows] == list(range(25))
    assert [row.id for row in rows] == result.ids
    assert {row.created_at for row in rows} == {result.created_at}  # one transaction: one database time
    for row, trace in zip(rows, traces, strict=True):
        assert as_received(row) == trace
        assert (row.step_count, row.total_chars, row.content_hash) == tuple(derive(trace))
    assert stored_batch is not None and stored_batch.published_at is not None
    events = stream_events(redis_url)
    assert len(events) == 1
    assert events[0]["batch_id"] == str(batch.batch_id) and events[0]["count"] == "25"
    assert json.loads(events[0]["ids"]) == result.ids


@pytest.mark.parametrize("read_as", ["dicts", "compiled structs"])
async def test_text_and_json_of_every_shape_read_back_as_sent_with_their_derived_fields(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher, read_as: str
) -> None:
    base = next(generate_traces(1))
    traces = [
        {**base, "prompt": 'tab\there, newline\nthere, a backslash \\ and "quotes"', "meta": None},
        {**base, "final_answer": "ünïcödé, 𝔘𝔫𝔦, 🤔, \u2028", "meta": {"z": [1, -(2**63), 2.5e-300, None, True]}},
        {key: value for key, value in base.items() if key != "meta"},
        {**base, "meta": {"nested": {"deeper": {"k": "ß"}}, "": "empty key", "float": 1234.5678}},
    ]
    valid = validate_traces(traces, max_batch=1000, max_bytes=8 * 1024 * 1024)
    if read_as == "compiled structs":  # what the worker stores: the body read back through the compiled rules
        valid = validate_body(valid.body, max_batch=1000, max_bytes=8 * 1024 * 1024)
    batch = BatchIn(uuid.uuid4(), "tests", valid)
    async with sessions() as session:
        await ingest_batch(session, batch, publisher=publisher)
    async with sessions() as session:
        rows = (await session.scalars(select(Trace).order_by(Trace.position))).all()
    assert len(rows) == len(traces)
    for row, trace in zip(rows, traces, strict=True):
        assert as_received(row) == {"meta": None, **trace}
        assert (row.step_count, row.total_chars, row.content_hash) == tuple(derive(trace))
        assert row.derivation_version == DERIVATION_VERSION


async def test_rerun_of_a_stored_batch_stores_nothing_and_publishes_nothing_new(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher, redis_url: str
) -> None:
    batch = make_batch(list(generate_traces(10)))
    async with sessions() as session:
        first = await ingest_batch(session, batch, publisher=publisher)
    async with sessions() as session:
        again = await ingest_batch(session, batch, publisher=publisher)

    assert again.ids == first.ids and again.created_at == first.created_at
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Trace)) == 10
    assert len(stream_events(redis_url)) == 1


async def test_same_batch_id_with_other_traces_is_a_conflict_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher
) -> None:
    batch = make_batch(list(generate_traces(3)))
    async with sessions() as session:
        await ingest_batch(session, batch, publisher=publisher)
    other = make_batch(list(generate_traces(3, seed=7)), batch_id=batch.batch_id)
    async with sessions() as session:
        with pytest.raises(BatchConflict, match="different traces"):
            await ingest_batch(session, other, publisher=publisher)
        prompts = (await session.scalars(select(Trace.prompt).order_by(Trace.position))).all()
    assert prompts == [t["prompt"] for t in batch.valid.traces]


async def test_one_select_after_commit_reads_back_a_batch_of_1000(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher
) -> None:
    statements: list[str] = []  # what SQLAlchemy runs, and what runs on the asyncpg connection itself

    def log_driver_statement(logged: Any) -> None:
        statements.append(" ".join(logged.query.split()))

    def watch(dbapi: Any, *_: Any) -> None:
        dbapi.driver_connection.add_query_logger(log_driver_statement)

    def unwatch(dbapi: Any, *_: Any) -> None:
        dbapi.driver_connection.remove_query_logger(log_driver_statement)

    event.listen(engine.sync_engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    event.listen(engine.sync_engine, "commit", lambda _conn: statements.append("COMMIT"))
    event.listen(engine.sync_engine, "checkout", watch)
    event.listen(engine.sync_engine, "checkin", unwatch)

    async with sessions() as session:
        result = await ingest_batch(session, make_batch(list(generate_traces(1000))), publisher=publisher)

    assert result.count == 1000
    reads_of_traces = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and " trace " in sql]
    assert len(reads_of_traces) == 1 and statements.index(reads_of_traces[0]) > statements.index("COMMIT")
    inserts = [sql for sql in statements if sql.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1 and "batch" in inserts[0]  # the 1,000 traces go by COPY on the same connection


async def test_a_failure_after_the_copy_rolls_the_copied_rows_back_with_the_batch(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    batch = make_batch(list(generate_traces(50)))
    async with sessions() as session:
        assert await claim_batch(session, batch, attempts=1) is not None
        await copy_traces(session, batch)
        assert await session.scalar(select(func.count()).select_from(Trace)) == 50  # visible inside the transaction
        await session.rollback()  # e.g. the process dies, or a later statement fails, before the commit
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Trace)) == 0
        assert await session.get(Batch, batch.batch_id) is None


async def test_the_event_of_a_1000_trace_batch_is_compact_and_names_its_rows_in_order(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher, redis_url: str
) -> None:
    async with sessions() as session:
        result = await ingest_batch(session, make_batch(list(generate_traces(1000))), publisher=publisher)
    (event,) = stream_events(redis_url)

    assert set(event) == {"event_version", "batch_id", "source", "count", "ingested_at", "created_at", "ids"}
    assert event["event_version"] == "2" and event["count"] == "1000"
    assert json.loads(event["ids"]) == result.ids == sorted(result.ids)
    assert datetime.fromisoformat(event["created_at"]) == result.created_at
    assert sum(len(name) + len(value) for name, value in event.items()) < 10_000
    task_result = orjson.dumps(result.model_dump(mode="json"))
    assert len(task_result) < 10_000


async def test_unreachable_stream_leaves_the_batch_stored_but_unpublished(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    dead_redis = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    batch = make_batch(list(generate_traces(4)))
    async with sessions() as session:
        result = await ingest_batch(session, batch, publisher=RedisStreamPublisher(dead_redis, STREAM, 100))
    await dead_redis.aclose()

    assert result.count == 4 and not result.published
    async with sessions() as session:
        stored = await session.get(Batch, batch.batch_id)
    assert stored is not None and stored.published_at is None


async def test_an_event_short_of_its_replicas_leaves_the_batch_unpublished_for_the_sweep(
    sessions: async_sessionmaker[AsyncSession], redis_client: Redis
) -> None:
    """With INGEST_REDIS_MIN_REPLICAS, an event no replica confirmed is not "out": a failover could lose it."""
    batch = make_batch(list(generate_traces(3)))
    unreplicated = RedisStreamPublisher(redis_client, STREAM, 100, replicas=1, replica_timeout_ms=50)
    async with sessions() as session:
        result = await ingest_batch(session, batch, publisher=unreplicated)

    assert result.count == 3 and not result.published
    async with sessions() as session:
        stored = await session.get(Batch, batch.batch_id)
    assert stored is not None and stored.published_at is None


async def test_concurrent_duplicate_deliveries_store_one_copy(
    sessions: async_sessionmaker[AsyncSession], publisher: RedisStreamPublisher
) -> None:
    batch = make_batch(list(generate_traces(200)))

    async def deliver() -> int:
        async with sessions() as session:  # each delivery has its own session, as two workers would
            return (await ingest_batch(session, batch, publisher=publisher)).count

    counts = list(await asyncio.gather(deliver(), deliver(), deliver()))

    assert counts == [200, 200, 200]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Trace)) == 200
