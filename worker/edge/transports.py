"""kombu's Redis transports with one fix: a worker survives losing the broker while it holds unacked messages.

After a connection error, Celery collects the broken connection (which detaches its transport) and then closes
it; closing a channel that still holds unacked messages tries to restore them and, with the transport detached,
fails with an AttributeError that ends the worker ("Unrecoverable error"; kombu #582, celery #9250). Here that
case is a connection error, which closing ignores: the worker reconnects (to the new master after a Sentinel
failover), and the messages come back by the visibility timeout and custody's re-send, as after any crash.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


def install() -> None:
    """Serve `redis://` and `sentinel://` broker URLs with these transports. Registered as kombu's aliases (not
    as `broker_transport`) so that URLs keep their scheme for Flower's broker view and the logs; `rediss://`
    keeps kombu's own TLS transport."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:RedisTransport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
    for scheme in ("redis", "sentinel"):
        _transport_cache.pop(scheme, None)  # resolved before this ran: resolve again


def install_in_worker_processes() -> None:
    """`install` when this process is `celery ... worker` (the only kind that holds unacked messages), at import,
    before anything connects. Producers and every other process that imports `worker` keep kombu as it was
    (PRODUCT.md §4)."""
    program = Path(sys.argv[0])
    if (program.name == "celery" or program.parent.name == "celery") and "worker" in sys.argv[1:]:
        install()
