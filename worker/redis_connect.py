"""Every Redis client of the product, made in one place (PRODUCT.md §12).

`REDIS_URL` is one server (`redis://`, `rediss://`) or a Sentinel list (`sentinel://:pw@h1:26379/0;sentinel://…`,
kombu's format) with `REDIS_SENTINEL_MASTER`: the password in the URL is the Redis master's, the Sentinels' own
is `REDIS_SENTINEL_PASSWORD`. Sentinel clients ask the Sentinels for the current master whenever they connect,
so after a failover they follow the new master by themselves. Redis Cluster is refused: kombu cannot use it as a
broker.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from services.errors import IngestError
from worker.settings import Settings, get_settings

_CLUSTER_SCHEMES = {"redis+cluster", "rediss+cluster", "redis-cluster", "rediscluster", "cluster"}


class RedisUrlError(IngestError, ValueError):
    """REDIS_URL (with REDIS_SENTINEL_MASTER) names no Redis this product can use; the message says why."""


class SentinelTarget(NamedTuple):
    sentinels: list[tuple[str, int]]
    master: str
    password: str | None
    username: str | None
    db: int
    sentinel_password: str | None


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def sentinel_target(settings: Settings) -> SentinelTarget | None:
    """The Sentinels and master of a Sentinel `REDIS_URL`, None for one server; `RedisUrlError` if unusable."""
    url = settings.redis_url.get_secret_value()
    scheme = _scheme(url)
    if scheme in _CLUSTER_SCHEMES:
        raise RedisUrlError(
            "REDIS_URL names a Redis Cluster, which kombu (Celery's Redis transport) cannot use as a broker; "
            "use one Redis, or Sentinel for high availability (REDIS_URL=sentinel://…, REDIS_SENTINEL_MASTER)"
        )
    if scheme != "sentinel":
        if settings.redis_sentinel_master:
            raise RedisUrlError("REDIS_SENTINEL_MASTER is set but REDIS_URL is not a sentinel:// list")
        return None
    if not settings.redis_sentinel_master:
        raise RedisUrlError("REDIS_URL is a sentinel:// list: set REDIS_SENTINEL_MASTER to the master's name")
    parts = [urlsplit(part) for part in url.split(";") if part.strip()]
    if any(_scheme(part.geturl()) != "sentinel" or not part.hostname for part in parts):
        raise RedisUrlError("every entry of a Sentinel REDIS_URL must be sentinel://[:password@]host:port[/db]")
    first = parts[0]
    sentinel_password = settings.redis_sentinel_password
    return SentinelTarget(
        sentinels=[(str(part.hostname), part.port or 26379) for part in parts],
        master=settings.redis_sentinel_master,
        password=unquote(first.password) if first.password else None,
        username=unquote(first.username) if first.username else None,
        db=int(first.path.strip("/") or 0),
        sentinel_password=sentinel_password.get_secret_value() if sentinel_password else None,
    )


def refuse_unusable_url_in_celery_commands() -> None:
    """`celery -A worker …` stops with one line (no traceback) when REDIS_URL cannot work, before Celery reads
    its configuration."""
    program = Path(sys.argv[0])
    if program.name != "celery" and program.parent.name != "celery":
        return
    try:
        sentinel_target(get_settings())
    except RedisUrlError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _sentinel_kwargs(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    timeouts: dict[str, Any] = {
        key: options[key] for key in ("socket_timeout", "socket_connect_timeout") if key in options
    }
    return {**timeouts, **({"password": target.sentinel_password} if target.sentinel_password else {})}


def _master_kwargs(target: SentinelTarget) -> dict[str, Any]:
    credentials = {"password": target.password, "username": target.username}
    return {"db": target.db, **{key: value for key, value in credentials.items() if value}}


def _client(plain: Any, with_sentinels: Any, settings: Settings | None, options: dict[str, Any]) -> Any:
    """A client made by `plain.from_url`, or by `with_sentinels(...).master_for` for a Sentinel REDIS_URL."""
    settings = settings or get_settings()
    target = sentinel_target(settings)
    if target is None:
        return plain.from_url(settings.redis_url.get_secret_value(), **options)
    sentinels = with_sentinels(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, options), **options)
    return sentinels.master_for(target.master, **_master_kwargs(target))


def connect(settings: Settings | None = None, **options: Any) -> Redis:
    """A new client of the current master (or of the one server), with `options` (timeouts, decoding)."""
    return cast(Redis, _client(Redis, Sentinel, settings, options))


def connect_async(settings: Settings | None = None, **options: Any) -> AsyncRedis:
    """`connect` for asyncio code."""
    return cast(AsyncRedis, _client(AsyncRedis, AsyncSentinel, settings, options))


@lru_cache
def _shared(url: str, master: str | None, sentinel_password: str | None) -> Redis:
    del url, master, sentinel_password  # the cache key: one client per configuration
    return connect(socket_connect_timeout=3, socket_timeout=5)


def shared_client() -> Redis:
    """One client (and connection pool) per configuration per process, for producers and operator commands."""
    settings = get_settings()
    sentinel_password = settings.redis_sentinel_password
    return _shared(
        settings.redis_url.get_secret_value(),
        settings.redis_sentinel_master,
        sentinel_password.get_secret_value() if sentinel_password else None,
    )


def celery_redis_options(settings: Settings) -> dict[str, Any]:
    """What the Celery app needs to reach Redis through Sentinel: the broker's and the result backend's
    transport options and RedBeat's connection; empty for one server."""
    target = sentinel_target(settings)
    if target is None:
        return {}
    sentinel_kwargs = _sentinel_kwargs(target, {"socket_timeout": 5, "socket_connect_timeout": 3})
    via_sentinel = {"master_name": target.master, "sentinel_kwargs": sentinel_kwargs}
    return {
        "broker_transport_options": via_sentinel,
        "result_backend_transport_options": via_sentinel,
        "redbeat_redis_url": "redis-sentinel://",
        "redbeat_redis_options": {
            "sentinels": target.sentinels,
            "service_name": target.master,
            "sentinel_kwargs": sentinel_kwargs,
            "socket_timeout": 5,
            **_master_kwargs(target),
        },
    }
