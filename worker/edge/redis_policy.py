"""Workers refuse a Redis that may evict keys (custody's bodies would vanish silently, PRODUCT.md §5) and a Redis
Cluster node (kombu cannot use Cluster as a broker, §12)."""

from __future__ import annotations

import logging
import sys

from redis.exceptions import RedisError

from worker.redis_connect import connect
from worker.settings import redact

log = logging.getLogger(__name__)


def eviction_problem(policy: str) -> str | None:
    """Why a `maxmemory-policy` is unsafe for custody, or None for `noeviction`."""
    if policy == "noeviction":
        return None
    return (
        f"refusing to start: Redis maxmemory-policy is {policy!r}, which can evict queued batch bodies; "
        "set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction, or in redis.conf)"
    )


CLUSTER_PROBLEM = (
    "refusing to start: this Redis runs in cluster mode, which kombu (Celery's Redis transport) cannot use as a "
    "broker; use one Redis, or Sentinel for high availability"
)


def _problem() -> str | None:
    client = connect(socket_connect_timeout=3, socket_timeout=5)
    try:
        if int(client.info("cluster").get("cluster_enabled", 0)):
            return CLUSTER_PROBLEM
        return eviction_problem(str(client.info("memory")["maxmemory_policy"]))
    finally:
        client.close()


def refuse_unsafe_redis(**_: object) -> None:
    try:
        problem = _problem()
    except RedisError as error:  # not reachable yet: the worker's own connection retries will say so
        log.warning("could not check Redis's maxmemory-policy: %s", redact(str(error)))
        return
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(1)
