"""Which errors are worth a retry: a dependency that was briefly away, never a bad batch or a bug."""

from __future__ import annotations

import asyncpg
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.errors import TransientError

_TRANSIENT_TYPES = (
    TransientError,
    OSError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    PoolTimeout,
    SoftTimeLimitExceeded,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.InterfaceError,
)


def is_transient(error: BaseException) -> bool:
    """True for connection loss, server restarts, timeouts and serialization conflicts."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _TRANSIENT_TYPES):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False
