"""Which custody records were lost in transit (worker.custody.records), for `reprocess.resend_lost`: out of the
queue and untouched for longer than any live delivery takes, or held by a worker whose heartbeat stopped."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis

from worker import keys
from worker.custody import scripts
from worker.settings import Settings


def lost_after_s(settings: Settings) -> int:
    """How long a record out of the queue may go untouched before it counts as lost: a dead host's unacked
    messages come back after the visibility timeout (later if it died holding the scan lock), and a message a
    live worker reserved waits at most one task ahead of it."""
    return settings.visibility_timeout_s + settings.unacked_mutex_expire_s + settings.task_time_limit_s


async def overdue(
    redis: AsyncRedis, settings: Settings, *, untouched_for_s: int | None = None, limit: int = 100
) -> list[str]:
    """Records out of the queue and untouched for `lost_after_s` (or `untouched_for_s`), or whose delivery's
    worker has stopped beating (worker.edge.heartbeat): stored but not released (their worker died in between),
    lost, or taken by a worker that died."""
    script_keys = [
        keys.CUSTODY_SEQ,
        keys.CUSTODY_WAITING,
        keys.CUSTODY_TAKEN,
        keys.CUSTODY_HORIZON,
        settings.ingest_queue,
        keys.CUSTODY_OWNERS,
    ]
    quiet_for = lost_after_s(settings) if untouched_for_s is None else untouched_for_s
    ids = await redis.eval(scripts.OVERDUE, len(script_keys), *script_keys, quiet_for, limit, keys.HEARTBEAT)
    return [value.decode() if isinstance(value, bytes) else str(value) for value in ids]


async def resendable_message(redis: AsyncRedis, record: str) -> dict[str, Any] | None:
    """The task kwargs to send again for a record: its ticket (v2) or its whole message (v1); None if gone."""
    ticket, legacy = await redis.mget(keys.custody_ticket_key(record), keys.custody_legacy_payload_key(record))
    raw = ticket or legacy
    return None if raw is None else dict(orjson.loads(raw))
