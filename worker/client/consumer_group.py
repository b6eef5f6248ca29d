"""One consumer's side of a Redis consumer group on the event stream (worker.client.consumer): join the group,
read new, pending and abandoned entries (XAUTOCLAIM), load a batch's rows with one SELECT, acknowledge, and keep
the group's handled batch ids so an event published twice is handed over once."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from worker.redis_connect import connect_async
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: Batch ids a group remembers as handed over, newest kept: far more than the sweep can ever publish twice.
HANDLED_KEPT = 100_000
# The JSON columns come as PostgreSQL's text of them: parsed for Python callers, or passed on untouched
# (`orjson.Fragment`) by callers that only write them out again.
_LOAD = (
    "SELECT id, position, created_at, trace_version, prompt, final_answer, steps::text AS steps, meta::text AS meta "
    "FROM trace WHERE id = ANY($1::bigint[]) ORDER BY position"
)
# Each trace as its finished JSON line, keys in `_LOAD`'s order after `batch_id`. PostgreSQL turns every jsonb
# into text anyway; gluing the line there too leaves the consumer one bytes object per trace, and an export
# twice the rate of building each line in Python. `created_at` is written in the session's time zone: UTC (below).
LOAD_LINES = """
SELECT convert_to(
    '{"batch_id":"' || batch_id || '","id":' || id || ',"position":' || position
    || ',"created_at":' || to_json(created_at)::text || ',"trace_version":' || to_json(trace_version)::text
    || ',"prompt":' || to_json(prompt)::text || ',"final_answer":' || to_json(final_answer)::text
    || ',"steps":' || steps::text || ',"meta":' || coalesce(meta::text, 'null') || E'}\\n',
    'UTF8')
FROM trace WHERE id = ANY($1::bigint[]) ORDER BY position
"""


class IngestedBatch(NamedTuple):
    """One stored batch as a consumer gets it: its event's fields and its rows, in position order."""

    batch_id: UUID
    source: str
    created_at: datetime | None
    traces: list[dict[str, Any]]
    entry_id: str

    def __repr__(self) -> str:  # short: asyncio formats the results of finished tasks, and a batch is megabytes
        return f"IngestedBatch(batch_id={self.batch_id}, traces=<{len(self.traces)} rows>, entry_id={self.entry_id})"


class IngestedLines(NamedTuple):
    """One stored batch as JSON lines: its event's fields and one line per trace (UTF-8, newline-terminated), in
    position order, each `{"batch_id", "id", "position", "created_at", "trace_version", "prompt", "final_answer",
    "steps", "meta"}` as `tunix-ingest follow` writes it."""

    batch_id: UUID
    source: str
    created_at: datetime | None
    lines: list[bytes]
    entry_id: str

    def __repr__(self) -> str:  # short, as IngestedBatch's
        return f"IngestedLines(batch_id={self.batch_id}, lines=<{len(self.lines)}>, entry_id={self.entry_id})"


def handled_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:handled"


def in_flight_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:in_flight"


#: Whether this consumer hands a batch over, decided atomically: not if the group has handled it, nor while
#: another entry of the same batch (its first event, when the sweep announced it twice) is pending with the
#: group, whose consumer hands it over (or, if that one dies, whoever claims the entry). Otherwise the batch
#: is in flight with this entry until acknowledged. KEYS: handled, in flight, stream; ARGV: group, batch, entry.
_TAKE_OVER = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[3] and #redis.call('XPENDING', KEYS[3], ARGV[1], holder, holder, 1) > 0 then
    return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


def malformed_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:malformed"


def trace_ids(fields: dict[bytes, bytes]) -> list[int]:
    """The row ids an event names: `ids` (event v2) or `traces` (v1, a list of {id, position, created_at})."""
    if b"ids" in fields:
        ids = orjson.loads(fields[b"ids"])
    else:
        ids = [trace["id"] for trace in orjson.loads(fields[b"traces"])]
    if type(ids) is not list or not all(type(value) is int for value in ids):  # `type`: no bools, and fast
        raise ValueError("ids is not a list of row ids")
    return ids


def _event_fields(fields: dict[bytes, bytes]) -> tuple[UUID, str, datetime | None]:
    created_at = fields.get(b"created_at", b"").decode()
    return (
        UUID(fields[b"batch_id"].decode()),
        fields.get(b"source", b"").decode(),
        datetime.fromisoformat(created_at) if created_at else None,
    )


class GroupReader:
    def __init__(
        self, group: str, consumer: str, *, from_start: bool, claim_idle_s: float, block_ms: int, raw_json: bool
    ) -> None:
        settings = get_settings()
        self.stream, self.group, self.consumer = settings.ingest_events_stream, group, consumer
        self.from_start, self.claim_idle_ms, self.block_ms = from_start, int(claim_idle_s * 1000), block_ms
        self.redis = connect_async(settings, socket_timeout=block_ms / 1000 + 10)
        self.take_over_script = self.redis.register_script(_TAKE_OVER)
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url.get_secret_value(),
            pool_size=1,
            connect_args={"server_settings": {"timezone": "UTC"}},  # `created_at` in JSON lines: `+00:00`
        )
        self.sessions = async_sessionmaker(self.engine)
        self.json_value: Any = orjson.Fragment if raw_json else orjson.loads
        #: Where the next XAUTOCLAIM scan of the group's pending entries goes on (it walks them all in turn).
        self.claim_cursor = "0-0"
        #: A whole scan that found nothing abandoned waits this long for the next: not one scan per batch.
        self.claim_every_s = min(claim_idle_s / 4, 5.0)
        self.next_claim_scan = 0.0
        #: This consumer's own pending entries (a previous run of it stopped before acking) are read until none
        #: is left; entries it reads afterwards are acknowledged before it reads again.
        self.own_pending_left = True

    async def join(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0" if self.from_start else "$", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read(self, source: str) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """One entry at a time: a consumer that stops (or dies) holds at most the batch it was handing over."""
        reply: Any
        if source == "own":  # this consumer's pending entries (a previous run of it stopped before acking)
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=1)
        elif source == "claimed":  # entries a dead consumer of the group left idle
            reply = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self.claim_cursor, count=1
            )
            cursor = reply[0]
            self.claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            return list(reply[1])
        else:
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=1, block=self.block_ms
            )
        return list(reply[0][1]) if reply else []

    def _sources(self) -> list[str]:
        sources = ["own"] if self.own_pending_left else []
        if time.monotonic() >= self.next_claim_scan:
            sources.append("claimed")
        return [*sources, "new"]

    async def entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries for this consumer: its own pending ones first, then those a dead consumer left idle, then new."""
        for source in self._sources():
            found = await self._read(source)
            if not found and source == "own":
                self.own_pending_left = False
            if not found and source == "claimed" and self.claim_cursor == "0-0":  # a whole scan, nothing idle
                self.next_claim_scan = time.monotonic() + self.claim_every_s
            for entry_id, fields in found:
                if not fields:  # trimmed from the stream while pending: nothing left to hand over
                    await self.acknowledge(entry_id, None)
            entries = [(entry_id, fields) for entry_id, fields in found if fields]
            if entries:
                return entries
        return []

    async def _fetch(self, query: str, ids: list[int]) -> list[Any]:
        async with self.sessions() as session:  # one session per batch, never shared
            # The session's own asyncpg connection: thousands of wide rows skip SQLAlchemy's row objects.
            raw = await (await session.connection()).get_raw_connection()
            return await raw.driver_connection.fetch(query, ids)  # type: ignore[union-attr,no-any-return]

    async def load(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedBatch:
        as_value = self.json_value
        traces = []
        for row in await self._fetch(_LOAD, trace_ids(fields)):
            trace = dict(row)
            trace["steps"] = as_value(trace["steps"])
            if trace["meta"] is not None:
                trace["meta"] = as_value(trace["meta"])
            traces.append(trace)
        return IngestedBatch(*_event_fields(fields), traces, entry_id.decode())

    async def load_lines(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedLines:
        lines = [row[0] for row in await self._fetch(LOAD_LINES, trace_ids(fields))]
        return IngestedLines(*_event_fields(fields), lines, entry_id.decode())

    async def take_over(self, entry_id: bytes, batch_id: bytes) -> bool:
        """True if this consumer is to hand the entry's batch over (see `_TAKE_OVER`); False: acknowledge it
        without (`acknowledge(entry_id, None)`), the group has or will have handed the batch over."""
        keys = [handled_key(self.stream, self.group), in_flight_key(self.stream, self.group), self.stream]
        return bool(await self.take_over_script(keys=keys, args=[self.group, batch_id, entry_id]))

    async def acknowledge(self, entry_id: bytes, handed_over: bytes | None) -> None:
        """Ack the entry and, if it handed batch `handed_over` over, remember that batch as handled, in one
        transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            if handed_over is not None:
                key = handled_key(self.stream, self.group)
                pipe.zadd(key, {handed_over: time.time()})
                pipe.zremrangebyrank(key, 0, -HANDLED_KEPT - 1)
                pipe.hdel(in_flight_key(self.stream, self.group), handed_over)
            await pipe.execute()

    async def skip_malformed(self, entry_id: bytes, problem: str) -> None:
        log.error("stream entry %s of %s is no ingested event (%s); skipped", entry_id.decode(), self.stream, problem)
        await self.redis.incr(malformed_key(self.stream, self.group))
        await self.acknowledge(entry_id, None)

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()
