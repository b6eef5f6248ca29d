"""The beat schedule. Beat only enqueues; the work runs on the `reprocess` queue, one session per task.
Exactly one beat fires at a time: RedBeat holds a lock in Redis (`redbeat::lock`)."""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import keys

log = logging.getLogger(__name__)


def beat_schedule(sweep_s: float, resend_s: float, redrive_s: float, refresh_s: float) -> dict[str, dict[str, Any]]:
    """Each entry expires shortly before its next run, so a backlog never piles up copies of the same job."""

    def entry(task: str, every: float) -> dict[str, Any]:
        return {"task": task, "schedule": every, "options": {"queue": keys.REPROCESS_QUEUE, "expires": every * 0.9}}

    return {
        "publish-unpublished-batches": entry(keys.SWEEP_TASK, sweep_s),
        "resend-lost-batches": entry(keys.RESEND_LOST_TASK, resend_s),
        "redrive-failed-batches": entry(keys.REDRIVE_TASK, redrive_s),
        "refresh-derived-fields": entry(keys.REFRESH_TASK, refresh_s),
    }


class FailoverTolerantScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat whose beat survives a Redis restart or a Sentinel failover (PRODUCT.md §12).

    RedBeat retries its schedule reads for `retry_period`, but not the extension of its lock, which runs first
    in every tick: a connection error there would end beat. Here the tick is tried again a second later, on
    the new master. A lock that expired meanwhile and was taken by another beat still ends this one
    (`LockNotOwnedError`), so two beats never fire together.
    """

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            return float(super().tick(*args, **kwargs))
        except (RedisConnectionError, RedisTimeoutError) as error:  # MasterNotFoundError is a ConnectionError
            log.warning("beat: Redis unreachable (%s); trying again in 1 s", type(error).__name__)
            return 1.0
