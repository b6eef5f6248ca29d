"""One consumer's side of a Redis consumer group on the event stream (worker.client.consumer): join the group,
read new, pending and abandoned entries (XAUTOCLAIM), load a batch's rows with one SELECT (all of them, or the
batch waits), acknowledge, and keep the group's handled batch ids so an event published twice is handed over
once."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from worker.client.consumer_items import IngestedBatch, IngestedLines, fetch_all_rows, parse_event_fields, trace_ids
from worker.client.consumer_statements import (
    HANDLED,
    HELD,
    LOAD,
    LOAD_LINES,
    RELEASE_TRIMMED,
    TAKE_OVER,
    TAKEN,
)
from worker.keys import handled_key, holders_key, malformed_key, short_batches_key
from worker.redis_connect import connect_async
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: Batch ids a group remembers as handed over, newest kept: far more than the sweep can ever publish twice.
HANDLED_KEPT = 100_000
#: A group's in-flight records expire this long after the last is written (see consumer_statements.TAKE_OVER).
IN_FLIGHT_EXPIRY_S = 86_400

__all__ = ["GroupReader", "handled_key", "holders_key", "malformed_key"]


class GroupReader:
    def __init__(
        self, group: str, consumer: str, *, from_start: bool, claim_idle_s: float, block_ms: int, raw_json: bool
    ) -> None:
        settings = get_settings()
        self.stream, self.group, self.consumer = settings.ingest_events_stream, group, consumer
        self.handled, self.holders = handled_key(self.stream, group), holders_key(self.stream, group)
        self.from_start, self.claim_idle_ms, self.block_ms = from_start, int(claim_idle_s * 1000), block_ms
        self.redis = connect_async(settings, socket_timeout=block_ms / 1000 + 10)
        self.take_over_script = self.redis.register_script(TAKE_OVER)
        self.release_trimmed_script = self.redis.register_script(RELEASE_TRIMMED)
        self.engine: AsyncEngine = create_async_engine(settings.database_url.get_secret_value(), pool_size=1)
        self.sessions = async_sessionmaker(self.engine)
        self.json_value: Any = orjson.Fragment if raw_json else orjson.loads
        #: Where the next XAUTOCLAIM scan of the group's pending entries goes on (it walks them all in turn).
        self.claim_cursor = "0-0"
        #: A whole scan that found nothing abandoned waits this long for the next: not one scan per batch.
        self.claim_every_s = min(claim_idle_s / 4, 5.0)
        self.next_claim_scan = 0.0
        #: Where the walk through this consumer's own pending entries (a previous run of it stopped before
        #: acking) goes on; None once it has read them all. Read once each: an entry that has to wait (HELD)
        #: waits in `deferred`, a short batch until claimed again; neither is read again in a loop.
        self.own_cursor: str | None = "0"
        #: Entries whose batch another consumer of the group holds (TAKE_OVER's HELD): offered again each round.
        self.deferred: dict[bytes, dict[bytes, bytes]] = {}
        #: When this consumer last acknowledged an entry: its idle time (`idle_exit_s`) counts from there.
        self.last_ack = time.monotonic()

    async def join(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0" if self.from_start else "$", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # One entry per read: a consumer that stops (or dies) holds at most the batch it was handing over.
    async def _read_own(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """The next of this consumer's own pending entries (a previous run of it stopped before acking)."""
        cursor = self.own_cursor or "0"
        reply: Any = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=1)
        found = list(reply[0][1]) if reply else []
        self.own_cursor = found[-1][0].decode() if found else None
        return found

    async def _claim(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """The next entry a dead (or stopped) consumer of the group left idle for `claim_idle_s`."""
        reply: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self.claim_cursor, count=1
        )
        self.claim_cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if len(reply) > 2 and reply[2]:  # Redis >= 7 drops pending entries trimmed away, and names them
            await self._trimmed_while_pending(reply[2])
        if not reply[1] and self.claim_cursor == "0-0":  # a whole scan found nothing idle
            self.next_claim_scan = time.monotonic() + self.claim_every_s
        return list(reply[1])

    async def _read_new(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """The next new entry, waiting up to `block_ms` for one: the pause between rounds."""
        reply: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=1, block=self.block_ms
        )
        return list(reply[0][1]) if reply else []

    async def entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries for this consumer: its own pending ones first, then those a dead consumer left idle, then new."""
        reads = [self._read_own] if self.own_cursor is not None else []
        if time.monotonic() >= self.next_claim_scan:
            reads.append(self._claim)
        for read in [*reads, self._read_new]:
            found = await read()
            for entry_id, fields in found:
                if not fields:  # trimmed from the stream while pending: nothing left to hand over
                    await self.acknowledge(entry_id, None)
                    await self._trimmed_while_pending([entry_id])
            entries = [(entry_id, fields) for entry_id, fields in found if fields]
            if entries:
                return entries
        return []

    async def _trimmed_while_pending(self, entry_ids: list[bytes]) -> None:
        """Warn, and free the in-flight records the entries held: their batches can no longer be handed over
        from them, and another event of such a batch must not wait for them."""
        await self.release_trimmed_script(keys=[self.holders], args=entry_ids)
        log.warning(
            "%d pending entries of group %s were trimmed from %s before they were acknowledged (%s): their batches "
            "are not handed over unless announced again; keep INGEST_EVENTS_MAXLEN above the group's lag",
            len(entry_ids),
            self.group,
            self.stream,
            ", ".join(entry_id.decode() for entry_id in entry_ids[:5]),
        )

    async def load(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedBatch:
        as_value = self.json_value
        traces = []
        for row in await fetch_all_rows(self.sessions, LOAD, trace_ids(fields)):
            trace = dict(row)
            trace["steps"] = as_value(trace["steps"])
            if trace["meta"] is not None:
                trace["meta"] = as_value(trace["meta"])
            traces.append(trace)
        return IngestedBatch(*parse_event_fields(fields), traces, entry_id.decode())

    async def load_lines(self, entry_id: bytes, fields: dict[bytes, bytes]) -> IngestedLines:
        lines = [row[0] for row in await fetch_all_rows(self.sessions, LOAD_LINES, trace_ids(fields))]
        return IngestedLines(*parse_event_fields(fields), lines, entry_id.decode())

    async def take_over(self, entry_id: bytes, batch_id: bytes) -> int:
        """TAKEN, HANDLED or HELD (see consumer_statements.TAKE_OVER): hand the batch over, acknowledge the entry
        without (`acknowledge(entry_id, None)`), or `defer` it."""
        keys = [self.handled, self.holders, self.stream]
        args: list[str | bytes | int] = [self.group, batch_id, entry_id, self.consumer, IN_FLIGHT_EXPIRY_S]
        decision = await self.take_over_script(keys=keys, args=args)
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
                pipe.zadd(self.handled, {handed_over: time.time()})
                pipe.zremrangebyrank(self.handled, 0, -HANDLED_KEPT - 1)
                pipe.hdel(self.holders, handed_over)
            await pipe.execute()
        self.last_ack = time.monotonic()

    async def skip_malformed(self, entry_id: bytes, problem: str, batch_id: bytes | None) -> None:
        """Log, count and acknowledge an entry that is no ingested event; a batch id it took over is released."""
        log.error("stream entry %s of %s is no ingested event (%s); skipped", entry_id.decode(), self.stream, problem)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(malformed_key(self.stream, self.group))
            pipe.xack(self.stream, self.group, entry_id)
            if batch_id is not None:
                pipe.hdel(self.holders, batch_id)
            await pipe.execute()
        self.last_ack = time.monotonic()

    async def leave_short(self, entry_id: bytes, problem: str) -> None:
        """Log and count a batch loaded with rows missing, and leave its entry pending, unacknowledged, and the
        batch in flight with this consumer: a claim scan (this consumer's or another's) loads it again once it
        has been idle `claim_idle_s`."""
        log.warning(
            "batch of stream entry %s of %s: %s; left pending, loaded again after the claim idle time",
            entry_id.decode(),
            self.stream,
            problem,
        )
        await self.redis.incr(short_batches_key(self.stream, self.group))

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()
