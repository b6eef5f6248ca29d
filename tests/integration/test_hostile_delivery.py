"""Hostile messages at the worker (PRODUCT.md §8.5, §8.12): every parse path (strict, lenient, parking) ends
in a recorded outcome, and a message whose reading fails in a way nobody foresaw is parked, never sent again
and again. Real PostgreSQL and Redis; the task tests run an in-process worker on the real broker."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.delivery import decision, parking
from services.delivery.deliver import ingest_message
from services.delivery.parking import park_failed_message
from services.delivery.parsing import Limits
from services.publish import Publisher
from services.reports import store_totals
from services.reprocess import find_failed_batches, redrive_batch
from tests.db import query
from tests.integration.test_task_edge import outcome, worker_in_this_process
from worker import enqueue_batch
from worker.custody import records as custody
from worker.edge.publisher import RedisStreamPublisher
from worker.keys import delivery_counter_key
from worker.localstack.sample_traces import generate_traces
from worker.settings import get_settings

LIMITS = Limits(max_batch=1000, max_bytes=8 * 1024 * 1024, max_deliveries=5)


class NoEvents:
    """Rejected and parked batches publish nothing; a call would fail the test."""

    async def publish(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("nothing is published for a batch that is not stored")


def claim_check(body: bytes, trace_count: int = 1) -> dict[str, Any]:
    """A v2 message naming `body` (its hash), as a crafted or corrupted producer would send it."""
    return {
        "batch_id": str(uuid.uuid4()),
        "source": "hostile",
        "trace_count": trace_count,
        "content_hash": hashlib.sha256(body).hexdigest(),
        "custody_seq": 1,
    }


def body_with_meta(meta_json: bytes) -> bytes:
    (trace,) = generate_traces(1)
    trace.pop("meta", None)
    return b"[" + orjson.dumps(trace)[:-1] + b',"meta":' + meta_json + b"}]"


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


async def rows(sessions: async_sessionmaker[AsyncSession], sql: str) -> list[Any]:
    async with sessions() as session:
        return list(await session.execute(text(sql)))


HUGE_META = body_with_meta(b'{"n":' + b"7" * 5000 + b"}")


async def test_a_claim_check_whose_body_holds_a_5000_digit_integer_is_rejected_naming_the_field(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    message = claim_check(HUGE_META)
    async with sessions() as session:
        result = await ingest_message(session, message, body=HUGE_META, publisher=NoEvents(), limits=LIMITS, attempts=1)

    assert result.state == "rejected"
    assert result.errors[0]["field_path"] == "meta" and "5000 digits" in result.errors[0]["message"]
    (batch,) = await rows(sessions, "SELECT id, state, raw_payload FROM batch")
    assert (str(batch.id), batch.state) == (message["batch_id"], "rejected") and "7777" in batch.raw_payload


async def test_parking_a_body_that_turns_out_invalid_keeps_it_as_rejected_instead_of_raising(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    message = claim_check(HUGE_META)
    async with sessions() as session:
        result = await park_failed_message(
            session, message, body=HUGE_META, reason="DB away", attempts=12, limits=LIMITS
        )

    assert result.state == "rejected"
    assert [row.state for row in await rows(sessions, "SELECT state FROM batch")] == ["rejected"]


async def test_a_v1_message_with_deep_meta_and_a_nul_is_rejected_with_its_payload_kept(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    (trace,) = generate_traces(1)
    message = {
        "batch_id": str(uuid.uuid4()),
        "source": "v1",
        "traces": [{**trace, "meta": {"k": nested(1500, "\x00")}}],
    }
    async with sessions() as session:
        result = await ingest_message(session, message, publisher=NoEvents(), limits=LIMITS, attempts=1)

    assert result.state == "rejected" and result.errors[0]["field_path"] == "meta"
    (batch,) = await rows(sessions, "SELECT raw_payload FROM batch")
    assert json.loads(batch.raw_payload)["batch_id"] == message["batch_id"]


async def test_a_batch_past_its_budget_is_parked_without_being_read_again(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = orjson.dumps(list(generate_traces(2)), option=orjson.OPT_SORT_KEYS)
    message = claim_check(body, trace_count=2)

    def crashes(*_: object) -> None:
        raise AssertionError("a batch past its budget must not be read again")

    monkeypatch.setattr(decision, "parse_delivery", crashes)
    publisher: Publisher = NoEvents()
    async with sessions() as session:
        result = await ingest_message(session, message, body=body, publisher=publisher, limits=LIMITS, attempts=6)

    assert result.state == "failed" and result.errors[0]["message"] == "delivered 6 times without being stored"
    (batch,) = await rows(sessions, "SELECT state, raw_payload FROM batch")
    assert json.loads(batch.raw_payload)["traces"] == json.loads(body)  # re-drivable as it came


def test_a_message_whose_reading_fails_unforeseen_is_parked_once_and_leaves_custody(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unforeseen(*_: object) -> None:
        raise ZeroDivisionError("a bug nobody foresaw, met by every reading of this batch")

    monkeypatch.setattr(decision, "parse_delivery", unforeseen)
    monkeypatch.setattr(parking, "parse_delivery", unforeseen)
    receipt = enqueue_batch(list(generate_traces(2)), source="unforeseen")

    with worker_in_this_process():
        result = outcome(receipt.task_id)

    assert result["state"] == "failed" and "ZeroDivisionError" in result["errors"][0]["message"]
    (batch,) = query(database_url, "SELECT state, raw_payload FROM batch")
    assert batch.state == "failed" and len(json.loads(batch.raw_payload)["traces"]) == 2
    client = redis.Redis.from_url(redis_url)
    assert custody.figures(client).in_transit == 0  # nothing left for the lost-message sweep to send again
    assert int(client.get(delivery_counter_key(str(receipt.batch_id))) or 0) == 1


def test_a_crashing_batch_redelivered_past_its_budget_is_parked_by_the_next_delivery(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipt = enqueue_batch(list(generate_traces(2)), source="crash-loop")
    # Deliveries that died with their process (as a segfault in a parser would) were counted as they started.
    redis.Redis.from_url(redis_url).set(delivery_counter_key(str(receipt.batch_id)), get_settings().max_deliveries)

    def would_crash_again(*_: object) -> None:
        raise AssertionError("read again: the crash loop goes on")

    monkeypatch.setattr(decision, "parse_delivery", would_crash_again)
    with worker_in_this_process():
        result = outcome(receipt.task_id)

    assert result["state"] == "failed" and result["errors"][0]["message"].startswith("delivered")
    assert custody.figures(redis.Redis.from_url(redis_url)).in_transit == 0


async def test_every_float_meta_accepts_reads_back_as_the_same_float_both_ways(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    """The number contract of §3: what validation lets through, PostgreSQL gives back unchanged, through
    SQLAlchemy's jsonb decoding and through the text PostgreSQL renders for `follow` and exports."""
    floats = {"lr": 3e-4, "tiny": -2.5e-300, "below": 9.999999999999998e15, "exact": 9007199254740993.0, "one": 1.0}
    integers = {"max": 2**63 - 1, "min": -(2**63)}
    (trace,) = generate_traces(1)
    message = {"batch_id": str(uuid.uuid4()), "source": "numbers", "traces": [{**trace, "meta": floats | integers}]}
    client = Redis.from_url(redis_url)
    publisher = RedisStreamPublisher(client, "numbers:ingested", 100)
    async with sessions() as session:
        result = await ingest_message(session, message, publisher=publisher, limits=LIMITS, attempts=1)
    await client.aclose()

    ((meta, rendered),) = await rows(sessions, "SELECT meta, meta::text FROM trace")
    assert result.state == "ingested"
    for read_back in (meta, json.loads(rendered)):
        assert read_back == floats | integers
        assert {key: type(value) for key, value in read_back.items()} == {
            key: type(value) for key, value in (floats | integers).items()
        }


async def test_a_batch_parked_unread_is_revived_by_its_redrive_and_stored_once(
    sessions: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    traces = list(generate_traces(3))
    body = orjson.dumps(traces, option=orjson.OPT_SORT_KEYS)
    parked_v2 = claim_check(body, trace_count=3)
    parked_v1 = {"batch_id": str(uuid.uuid4()), "source": "v1", "traces": list(generate_traces(2, seed=7))}
    sent: list[dict[str, Any]] = []

    async def resend(payload: dict[str, Any]) -> None:
        sent.append(payload)

    client = Redis.from_url(redis_url)
    publisher = RedisStreamPublisher(client, "revived:ingested", 100)
    for message, message_body in ((parked_v2, body), (parked_v1, None)):
        async with sessions() as session:
            parked = await ingest_message(
                session, message, body=message_body, publisher=publisher, limits=LIMITS, attempts=6
            )
        async with sessions() as session:
            assert parked.state == "failed" and await redrive_batch(
                session, parked.batch_id, resend=resend, max_redrives=1
            )
        async with sessions() as session:
            stored = await ingest_message(session, sent[-1], publisher=publisher, limits=LIMITS, attempts=1)
        assert stored.state == "ingested", stored.errors
    await client.aclose()

    assert await rows(sessions, "SELECT count(*) FROM batch_conflict") == [(0,)]
    assert await rows(sessions, "SELECT state, count(*) FROM batch GROUP BY state") == [("ingested", 2)]
    assert await rows(sessions, "SELECT count(*) FROM trace") == [(5,)]


async def test_a_body_no_json_can_be_is_kept_as_rejected_when_parked_unread(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    body = b'[{"prompt": "caf\xe9"}]'
    async with sessions() as session:
        result = await ingest_message(
            session, claim_check(body), body=body, publisher=NoEvents(), limits=LIMITS, attempts=6
        )

    assert result.state == "rejected" and result.errors[0]["message"] == "is not valid UTF-8 (byte 16)"
    async with sessions() as session:
        assert await find_failed_batches(session) == []  # nothing for the scheduled re-drive to choke on


async def test_a_failed_row_whose_payload_cannot_be_redriven_is_left_for_an_operator(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    kept = {"batch_id": str(uuid.uuid4()), "source": "odd", "traces": "no list"}  # kept as it came, past budget
    async with sessions() as session:
        parked = await ingest_message(session, kept, publisher=NoEvents(), limits=LIMITS, attempts=6)
    sent: list[Any] = []

    async def resend(payload: dict[str, Any]) -> None:
        sent.append(payload)

    async with sessions() as session:
        assert not await redrive_batch(session, parked.batch_id, resend=resend, max_redrives=3)
    assert parked.state == "failed" and sent == []


async def test_a_revived_batch_counts_the_traces_it_stored_not_those_its_parked_message_declared(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    traces = list(generate_traces(3))
    body = orjson.dumps(traces, option=orjson.OPT_SORT_KEYS)
    sent: list[dict[str, Any]] = []
    events: list[dict[str, str]] = []

    class Recorded:
        async def publish(self, fields: dict[str, str]) -> None:
            events.append(fields)

    async def resend(payload: dict[str, Any]) -> None:
        sent.append(payload)

    async with sessions() as session:  # past its budget: parked unread, with the count its message claims
        parked = await ingest_message(
            session, claim_check(body, trace_count=5), body=body, publisher=NoEvents(), limits=LIMITS, attempts=6
        )
    async with sessions() as session:
        assert await redrive_batch(session, parked.batch_id, resend=resend, max_redrives=1)
    async with sessions() as session:
        stored = await ingest_message(session, sent[-1], publisher=Recorded(), limits=LIMITS, attempts=1)
        totals = await store_totals(session)

    assert stored.state == "ingested" and stored.count == 3 and [event["count"] for event in events] == ["3"]
    assert await rows(sessions, "SELECT state, trace_count FROM batch") == [("ingested", 3)]
    assert totals.traces_stored == 3  # the totals read batch.trace_count: it must be what the rows are
