"""Workers refuse a Redis that may evict keys: custody's bodies would vanish silently (PRODUCT.md §5)."""

from __future__ import annotations

import logging
import sys

from celery import signals
from redis import Redis
from redis.exceptions import RedisError

from worker.settings import get_settings, redact

log = logging.getLogger(__name__)


def eviction_problem(policy: str) -> str | None:
    """Why a `maxmemory-policy` is unsafe for custody, or None for `noeviction`."""
    if policy == "noeviction":
        return None
    return (
        f"refusing to start: Redis maxmemory-policy is {policy!r}, which can evict queued batch bodies; "
        "set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction, or in redis.conf)"
    )


def _policy(url: str) -> str:
    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    try:
        return str(client.info("memory")["maxmemory_policy"])
    finally:
        client.close()


@signals.worker_init.connect
def _refuse_evicting_redis(**_: object) -> None:
    url = get_settings().redis_url.get_secret_value()
    try:
        problem = eviction_problem(_policy(url))
    except RedisError as error:  # not reachable yet: the worker's own connection retries will say so
        log.warning("could not check Redis's maxmemory-policy: %s", redact(str(error)))
        return
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(1)
