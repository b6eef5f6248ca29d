"""kombu's Redis transports with one fix: a worker survives losing the broker while it holds unacked messages.

After a connection error, Celery collects the broken connection (which detaches its transport) and then closes
it; closing a channel that still holds unacked messages tries to restore them and, with the transport detached,
fails with an AttributeError that ends the worker ("Unrecoverable error"; kombu #582, celery #9250). Here that
case is a connection error, which closing ignores: the worker reconnects (to the new master after a Sentinel
failover), and the messages come back by the visibility timeout and custody's re-send, as after any crash.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from kombu.transport import TRANSPORT_ALIASES, _transport_cache
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class _DetachedSafe:
    connection: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed after an error")
        return super()._connparams(asynchronous)  # type: ignore[misc]


class RedisChannel(_DetachedSafe, kombu_redis.Channel):
    pass


class SentinelChannel(_DetachedSafe, kombu_redis.SentinelChannel):
    pass


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


@signals.worker_init.connect
def install(**_: object) -> None:
    """Serve `redis://` and `sentinel://` broker URLs with these transports in a `celery worker` process (the
    only kind that holds unacked messages), before it connects. Registered as kombu's aliases (not as
    `broker_transport`) so that URLs keep their scheme for Flower's broker view and the logs; `rediss://` keeps
    kombu's own TLS transport. Producers and other processes that import `worker` keep kombu as it was
    (PRODUCT.md §4)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:RedisTransport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
    for scheme in ("redis", "sentinel"):
        _transport_cache.pop(scheme, None)  # resolved before this ran: resolve again
