"""Retry as policy, not as a task body: the error's type decides, every batch has one budget of deliveries
(`MAX_DELIVERIES`: retries and crash redeliveries alike), and when it is spent the batch is parked `failed`."""

from __future__ import annotations

import socket
from typing import NamedTuple

import asyncpg
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.errors import TransientError
from worker.settings import Settings, redact

_TRANSIENT_TYPES = (
    TransientError,
    ConnectionError,  # refused, reset, aborted, broken pipe: not every OSError (a missing file is no blip)
    TimeoutError,
    socket.gaierror,
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
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
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


class Decision(NamedTuple):
    """Retry after `retry_in` seconds, or park (`retry_in` None); `reason` names the error, credentials redacted."""

    retry_in: float | None
    reason: str


def decide(error: BaseException, *, deliveries: int, settings: Settings) -> Decision:
    """A transient error within the budget retries with exponential backoff and full jitter (capped at
    `RETRY_BACKOFF_MAX_S`, which the settings keep below the visibility timeout); anything else parks."""
    reason = redact(f"{type(error).__name__}: {error}")
    if not is_transient(error) or deliveries >= settings.max_deliveries:
        return Decision(None, reason)
    delay = get_exponential_backoff_interval(1, deliveries - 1, settings.retry_backoff_max_s, True)
    return Decision(max(1.0, float(delay)), reason)
