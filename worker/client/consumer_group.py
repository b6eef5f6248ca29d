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


class IngestedBatch(NamedTuple):
    """One stored batch as a consumer gets it: its event's fields and its rows, in position order."""

    batch_id: UUID
    source: str
    created_at: datetime | None
    traces: list[dict[str, Any]]
    entry_id: str

    def __repr__(self) -> str:  # short: asyncio formats the results of finished tasks, and a batch is megabytes
        return f"IngestedBatch(batch_id={self.batch_id}, traces=<{len(self.traces)} rows>, entry_id={self.entry_id})"


def handled_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:handled"


def malformed_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:malformed"


def trace_ids(fields: dict[bytes, bytes]) -> list[int]:
    """The row ids an event names: `ids` (event v2) or `traces` (v1, a list of {id, position, created_at})."""
    if b"ids" in fields:
        ids = orjson.loads(fields[b"ids"])
    else:
        ids = [trace["id"] for trace in orjson.loads(fields[b"traces"])]
    if not isinstance(ids, list) or not all(isinstance(value, int) for value in ids):
        raise ValueError("ids is not a list of row ids")
    return ids


class GroupReader:
    def __init__(
        self, group: str, consumer: str, *, from_start: bool, claim_idle_s: float, block_ms: int, raw_json: bool
    ) -> None:
        settings = get_settings()
        self.stream, self.group, self.consumer = settings.ingest_events_stream, group, consumer
        self.from_start, self.claim_idle_ms, self.block_ms = from_start, int(claim_idle_s * 1000), block_ms
        self.redis = connect_async(settings, socket_timeout=block_ms / 1000 + 10)
        self.engine: AsyncEngine = create_async_engine(settings.database_url.get_secret_value(), pool_size=1)
        self.sessions = async_sessionmaker(self.engine)
        self.json_value: Any = orjson.Fragment if raw_json else orjson.loads
        #: Where the next XAUTOCLAIM scan of the group's pending entries goes on (it walks them all in turn).
        self.claim_cursor = "0-0"

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

    async def entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries for this consumer: its own pending ones first, then those a dead consumer left idle, then new."""
        for source in ("own", "claimed", "new"):
            found = await self._read(source)
            for entry_id, fields in found:
                if not fields:  # trimmed from the stream while pending: nothing left to hand over
                    await self.acknowledge(entry_id, None)
            entries = [(entry_id, fields) for entry_id, fields in found if fields]
            if entries:
                return entries
        return []

    async def load(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedBatch:
        ids = trace_ids(fields)
        async with self.sessions() as session:  # one session per batch, never shared
            # The session's own asyncpg connection: thousands of wide rows skip SQLAlchemy's row objects.
            raw = await (await session.connection()).get_raw_connection()
            rows = await raw.driver_connection.fetch(_LOAD, ids)  # type: ignore[union-attr]
        as_value = self.json_value
        traces = []
        for row in rows:
            trace = dict(row)
            trace["steps"] = as_value(trace["steps"])
            if trace["meta"] is not None:
                trace["meta"] = as_value(trace["meta"])
            traces.append(trace)
        created_at = fields.get(b"created_at", b"").decode()
        return IngestedBatch(
            UUID(fields[b"batch_id"].decode()),
            fields.get(b"source", b"").decode(),
            datetime.fromisoformat(created_at) if created_at else None,
            traces,
            entry_id.decode(),
        )

    async def already_handled(self, batch_id: bytes) -> bool:
        return await self.redis.zscore(handled_key(self.stream, self.group), batch_id) is not None

    async def acknowledge(self, entry_id: bytes, batch_id: bytes | None) -> None:
        """Ack the entry and remember its batch as handed over, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            if batch_id is not None:
                key = handled_key(self.stream, self.group)
                pipe.zadd(key, {batch_id: time.time()})
                pipe.zremrangebyrank(key, 0, -HANDLED_KEPT - 1)
            await pipe.execute()

    async def skip_malformed(self, entry_id: bytes, problem: str) -> None:
        log.error("stream entry %s of %s is no ingested event (%s); skipped", entry_id.decode(), self.stream, problem)
        await self.redis.incr(malformed_key(self.stream, self.group))
        await self.acknowledge(entry_id, None)

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()
