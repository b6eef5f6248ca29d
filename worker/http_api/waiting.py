"""`?wait=S`: the batch's outcome as soon as it is known, or None when it is not known within S seconds.

Two signals race: the batch's "ingested" event (one stream reader per server process hands each event to the
requests waiting for its batch: the earliest signal, right after the worker's XADD), and the task's result on
the channel Celery's Redis backend announces it on (also covers batches that end rejected or failed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from typing import Any, cast
from uuid import UUID

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.errors import BatchConflict
from worker.edge.app import app

log = logging.getLogger(__name__)

_FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
#: How long one XREAD blocks; also how soon the reader notices it is being stopped.
_BLOCK_MS = 1000


def _final(meta: bytes | str | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    decoded: dict[str, Any] = json.loads(meta)
    return decoded if decoded.get("status") in _FINAL_STATES else None  # RETRY and STARTED are not final


async def task_result(redis: Redis, task_id: str) -> dict[str, Any] | None:
    """The task's return value once it is final (None if it failed); waits as long as it takes."""
    key = app.backend.get_key_for_task(task_id)
    async with redis.pubsub() as channel:
        await channel.subscribe(key)
        # A result stored before the subscription took effect is only in the key: read it once subscribed.
        meta = _final(await redis.get(key))
        while meta is None:
            message = await channel.get_message(ignore_subscribe_messages=True, timeout=_BLOCK_MS / 1000)
            meta = _final(message["data"]) if message else None
    result: dict[str, Any] | None = meta["result"] if meta["status"] == "SUCCESS" else None
    return result


def _as_result(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """An "ingested" event's fields in the task result's shape."""
    return {
        "batch_id": fields[b"batch_id"].decode(),
        "state": "ingested",
        "count": int(fields[b"count"]),
        "created_at": fields[b"created_at"].decode(),
        "ids": orjson.loads(fields[b"ids"]),
    }


class EventWatch:
    """Follows the event stream from the moment it starts and resolves the futures of waiting requests."""

    def __init__(self, redis: Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self.waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = defaultdict(list)
        self.reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    async def _start_id(self) -> bytes | str:
        """The stream's newest entry id now ("0-0" if empty): reads continue from it, never from a moving "$"."""
        while True:
            try:
                newest = await self.redis.xrevrange(self.stream, count=1)
            except RedisError as error:
                log.warning("event stream unreadable, retrying in 1 s: %s", type(error).__name__)
                await asyncio.sleep(1)
                continue
            return cast(bytes, newest[0][0]) if newest else "0-0"

    async def _read(self) -> None:
        last_id = await self._start_id()
        while True:
            try:
                replies = cast(
                    list[tuple[bytes, list[tuple[str, dict[bytes, bytes]]]]],
                    await self.redis.xread({self.stream: last_id}, block=_BLOCK_MS),
                )
            except RedisError as error:  # Redis away: waiting requests still get their result, or time out
                log.warning("event stream unreadable, retrying in 1 s: %s", type(error).__name__)
                await asyncio.sleep(1)
                continue
            for _, entries in replies:
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._hand_over(fields)

    def _hand_over(self, fields: dict[bytes, bytes]) -> None:
        waiting = self.waiters.pop(fields.get(b"batch_id", b"").decode(errors="replace"), [])
        if not waiting:
            return
        try:
            result = _as_result(fields)
        except (KeyError, ValueError, orjson.JSONDecodeError) as problem:  # not an event of ours: wait on
            log.warning("stream entry is no ingested event (%s); its waiters use the task result", problem)
            self.waiters.setdefault(fields[b"batch_id"].decode(errors="replace"), []).extend(waiting)
            return
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(result)

    def expect(self, batch_id: UUID) -> asyncio.Future[dict[str, Any]]:
        """A future for the batch's event; ask before enqueueing, so the event cannot pass unseen."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[str(batch_id)].append(waiter)
        return waiter

    def forget(self, batch_id: UUID, waiter: asyncio.Future[dict[str, Any]]) -> None:
        waiting = self.waiters.get(str(batch_id), [])
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiting:
            self.waiters.pop(str(batch_id), None)


async def outcome(
    watch: EventWatch, event: asyncio.Future[dict[str, Any]], task_id: str, seconds: float
) -> dict[str, Any] | None:
    """Whichever comes first, the batch's event or its final task result; None after `seconds`. Raises
    `BatchConflict` when the worker found the batch id stored with other traces (nothing of this batch stored)."""
    result: asyncio.Future[dict[str, Any] | None] = asyncio.ensure_future(task_result(watch.redis, task_id))
    signals: set[asyncio.Future[Any]] = {event, result}
    done, pending = await asyncio.wait(signals, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for unfinished in pending:
        unfinished.cancel()
    for finished in done:
        if finished.cancelled() or finished.exception() is not None:
            # Redis failed while we waited (a failover): no answer yet, so the receipt (202) goes out.
            log.warning(
                "?wait gave up on a signal: %r", finished.exception() if not finished.cancelled() else "cancelled"
            )
            continue
        if finished is event or finished.result() is not None:
            found: dict[str, Any] = finished.result()
            if found.get("state") == "conflict":  # the id was stored with other traces: 409, as at enqueue time
                raise BatchConflict(found.get("batch_id"))
            return found
    return None
