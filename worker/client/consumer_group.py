"""One consumer's side of a Redis consumer group on the event stream (worker.client.consumer): join the group,
read new, pending and abandoned entries (XAUTOCLAIM), load a batch's rows with one SELECT, acknowledge, and keep
the group's handled batch ids so an event published twice is handed over once."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from worker.client.consumer_items import IngestedBatch, IngestedLines, event_fields, trace_ids
from worker.client.consumer_statements import HANDLED, HELD, LOAD, LOAD_LINES, TAKE_OVER, TAKEN
from worker.redis_connect import connect_async
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: Batch ids a group remembers as handed over, newest kept: far more than the sweep can ever publish twice.
HANDLED_KEPT = 100_000
#: A group's in-flight records expire this long after the last is written (see consumer_statements.TAKE_OVER).
IN_FLIGHT_EXPIRY_S = 86_400


def handled_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:handled"


def in_flight_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:in_flight"


def malformed_key(stream: str, group: str) -> str:
    return f"ingest:consumer:{stream}:{group}:malformed"


class GroupReader:
    def __init__(
        self, group: str, consumer: str, *, from_start: bool, claim_idle_s: float, block_ms: int, raw_json: bool
    ) -> None:
        settings = get_settings()
        self.stream, self.group, self.consumer = settings.ingest_events_stream, group, consumer
        self.from_start, self.claim_idle_ms, self.block_ms = from_start, int(claim_idle_s * 1000), block_ms
        self.redis = connect_async(settings, socket_timeout=block_ms / 1000 + 10)
        self.take_over_script = self.redis.register_script(TAKE_OVER)
        self.engine: AsyncEngine = create_async_engine(settings.database_url.get_secret_value(), pool_size=1)
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
        #: Entries whose batch another consumer of the group holds (TAKE_OVER's HELD): offered again each round.
        self.deferred: dict[bytes, dict[bytes, bytes]] = {}

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
            if len(reply) > 2 and reply[2]:  # Redis >= 7 drops pending entries trimmed away, and names them
                self._trimmed_while_pending(reply[2])
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
                    self._trimmed_while_pending([entry_id])
                    await self.acknowledge(entry_id, None)
            entries = [(entry_id, fields) for entry_id, fields in found if fields]
            if entries:
                return entries
        return []

    def _trimmed_while_pending(self, entry_ids: list[bytes]) -> None:
        log.warning(
            "%d pending entries of group %s were trimmed from %s before they were acknowledged (%s): their batches "
            "are not handed over unless announced again; keep INGEST_EVENTS_MAXLEN above the group's lag",
            len(entry_ids),
            self.group,
            self.stream,
            ", ".join(entry_id.decode() for entry_id in entry_ids[:5]),
        )

    async def _fetch(self, query: str, ids: list[int]) -> list[Any]:
        async with self.sessions() as session:  # one session per batch, never shared
            # The session's own asyncpg connection: thousands of wide rows skip SQLAlchemy's row objects.
            raw = await (await session.connection()).get_raw_connection()
            return await raw.driver_connection.fetch(query, ids)  # type: ignore[union-attr,no-any-return]

    async def load(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedBatch:
        as_value = self.json_value
        traces = []
        for row in await self._fetch(LOAD, trace_ids(fields)):
            trace = dict(row)
            trace["steps"] = as_value(trace["steps"])
            if trace["meta"] is not None:
                trace["meta"] = as_value(trace["meta"])
            traces.append(trace)
        return IngestedBatch(*event_fields(fields), traces, entry_id.decode())

    async def load_lines(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedLines:
        lines = [row[0] for row in await self._fetch(LOAD_LINES, trace_ids(fields))]
        return IngestedLines(*event_fields(fields), lines, entry_id.decode())

    async def take_over(self, entry_id: bytes, batch_id: bytes) -> int:
        """TAKEN, HANDLED or HELD (see consumer_statements.TAKE_OVER): hand the batch over, acknowledge the entry
        without (`acknowledge(entry_id, None)`), or `defer` it."""
        keys = [handled_key(self.stream, self.group), in_flight_key(self.stream, self.group), self.stream]
        decision = await self.take_over_script(keys=keys, args=[self.group, batch_id, entry_id, IN_FLIGHT_EXPIRY_S])
        if decision not in (TAKEN, HANDLED, HELD):
            raise RuntimeError(f"unexpected take-over answer {decision!r}")
        return int(decision)

    def defer(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.deferred[entry_id] = fields

    def next_round(self, fresh: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries just read, then those deferred, each once (a claim scan may bring a deferred one back)."""
        round_, self.deferred = {**dict(fresh), **self.deferred}, {}
        return list(round_.items())

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

    async def skip_malformed(self, entry_id: bytes, problem: str, batch_id: bytes | None) -> None:
        """Log, count and acknowledge an entry that is no ingested event; a batch id it took over is released."""
        log.error("stream entry %s of %s is no ingested event (%s); skipped", entry_id.decode(), self.stream, problem)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(malformed_key(self.stream, self.group))
            pipe.xack(self.stream, self.group, entry_id)
            if batch_id is not None:
                pipe.hdel(in_flight_key(self.stream, self.group), batch_id)
            await pipe.execute()

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()
