"""The other end of the pipe (PRODUCT.md §6b): stored batches, handed to consumers through a Redis consumer group.

One item per batch, its traces loaded by one SELECT, acknowledged when the caller asks for the next one: at least
once, never short. The guarantees, the dedupe and the known limits are in docs/operations.md ("Consuming").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TypeVar

import orjson
from redis import Redis

from worker.client.consumer_group import GroupReader
from worker.client.consumer_items import IngestedBatch, IngestedLines, RowsMissing
from worker.client.consumer_statements import HANDLED, HELD
from worker.keys import short_batches_key

__all__ = [
    "IngestedBatch",
    "IngestedLines",
    "follow_ingested",
    "follow_ingested_async",
    "follow_ingested_lines_async",
    "short_batch_count",
]


#: Consumers one `follow` process runs by default: three SELECTs in flight keep two cores busy while the process
#: writes (measured in docs/performance.md; two leave PostgreSQL idle between batches, four gain nothing more).
FOLLOW_CONSUMERS = 3


Loaded = TypeVar("Loaded", IngestedBatch, IngestedLines)


def short_batch_count(redis: Redis, stream: str, group: str) -> int:
    """How many times a batch of `group` was loaded with rows missing and left pending, to be loaded again: for
    `stats` and `metrics` (a count that keeps rising: a replica far behind, or rows gone for good)."""
    return int(redis.get(short_batches_key(stream, group)) or 0)


async def _handed_over(
    make_reader: Callable[[], GroupReader],
    load: Callable[[GroupReader, bytes, dict[bytes, bytes]], Awaitable[Loaded]],
    idle_exit_s: float | None,
    stop: asyncio.Event | None,
) -> AsyncGenerator[Loaded, bool | None]:
    """The loop behind both forms: each entry loaded with `load`, yielded, and acknowledged when the caller asks
    for the next (see the module's docstring). The reader is made on the first step, so a generator never started
    holds no connection."""
    reader: GroupReader = make_reader()
    try:
        await reader.join()
        # Idle: no entry acknowledged. Entries that wait (HELD) or come back short are read again and again
        # without that: they must not keep a consumer alive.
        while idle_exit_s is None or time.monotonic() - reader.last_ack < idle_exit_s:
            if stop is not None and stop.is_set():
                return
            fresh: list[tuple[bytes, dict[bytes, bytes]]] = await reader.entries()
            for entry_id, fields in reader.next_round(fresh):
                batch_id = fields.get(b"batch_id")
                try:
                    if batch_id is None:
                        raise ValueError("it has no batch_id")
                    decision = await reader.take_over(entry_id, batch_id)
                    if decision == HANDLED:  # a second event of a batch the group has handed over
                        await reader.acknowledge(entry_id, None)
                        continue
                    if decision == HELD:  # another consumer of the group is handing it over: ask again later
                        reader.defer(entry_id, fields)
                        continue
                    batch = await load(reader, entry_id, fields)
                except RowsMissing as problem:  # never handed over nor acknowledged short: loaded again later
                    await reader.leave_short(entry_id, str(problem))
                    continue
                except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as problem:
                    await reader.skip_malformed(entry_id, str(problem), batch_id)
                    continue
                last = yield batch  # the caller handles it; coming back here means it is done
                await reader.acknowledge(entry_id, batch_id)
                if last:
                    return
    finally:
        await reader.close()


def follow_ingested_async(
    group: str,
    consumer: str,
    *,
    from_start: bool = False,
    claim_idle_s: float = 60.0,
    idle_exit_s: float | None = None,
    block_ms: int = 1000,
    raw_json: bool = False,
    stop: asyncio.Event | None = None,
) -> AsyncGenerator[IngestedBatch, bool | None]:
    """Stored batches for consumer `consumer` of group `group`, each acknowledged once the caller asks for the
    next (see the module's docstring); `asend(True)` acknowledges the current one and ends. With `raw_json`,
    `steps` and `meta` stay the JSON text PostgreSQL sent, as `orjson.Fragment`s. Joins the group,
    created at the stream's start or at its end (now). Ends after `idle_exit_s` without acknowledging a batch
    (entries that wait, or come back short, do not count), if given, or once `stop` is set (within one blocking
    read); otherwise follows until closed."""
    reader = functools.partial(
        GroupReader,
        group,
        consumer,
        from_start=from_start,
        claim_idle_s=claim_idle_s,
        block_ms=block_ms,
        raw_json=raw_json,
    )
    return _handed_over(reader, GroupReader.load, idle_exit_s, stop)


def follow_ingested_lines_async(
    group: str,
    consumer: str,
    *,
    from_start: bool = False,
    claim_idle_s: float = 60.0,
    idle_exit_s: float | None = None,
    block_ms: int = 1000,
    stop: asyncio.Event | None = None,
) -> AsyncGenerator[IngestedLines, bool | None]:
    """`follow_ingested_async` for exporters: each batch's traces come as finished JSON lines (`IngestedLines`),
    rendered by PostgreSQL, to be written out as they are (`out.writelines(batch.lines)`): what
    `tunix-ingest follow` writes, at twice the rate of building the lines from `IngestedBatch.traces`."""
    reader = functools.partial(
        GroupReader, group, consumer, from_start=from_start, claim_idle_s=claim_idle_s, block_ms=block_ms, raw_json=True
    )
    return _handed_over(reader, GroupReader.load_lines, idle_exit_s, stop)


def follow_ingested(
    group: str,
    consumer: str,
    *,
    from_start: bool = False,
    claim_idle_s: float = 60.0,
    idle_exit_s: float | None = None,
    raw_json: bool = False,
) -> Generator[IngestedBatch, bool | None, None]:
    """`follow_ingested_async` for synchronous code: `for batch in follow_ingested("builders", "b1"): ...`.
    `send(True)` acknowledges the current batch and ends; closing the iterator otherwise (break, an exception,
    Ctrl-C) leaves the current batch unacknowledged for a later delivery, never half-acknowledged."""
    with asyncio.Runner() as runner:
        batches = follow_ingested_async(
            group,
            consumer,
            from_start=from_start,
            claim_idle_s=claim_idle_s,
            idle_exit_s=idle_exit_s,
            raw_json=raw_json,
        )

        async def step(stop: bool | None) -> IngestedBatch:
            return await batches.asend(stop)

        stop: bool | None = None
        try:
            while True:
                try:
                    batch = runner.run(step(stop))
                except StopAsyncIteration:
                    return
                stop = yield batch
        finally:
            runner.run(batches.aclose())
