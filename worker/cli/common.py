"""What the commands share: known errors turned into one line, and values made ready for JSON output."""

from __future__ import annotations

import functools
import select
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import asyncpg
from celery.exceptions import TimeoutError as CeleryTimeout
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from services.errors import IngestError
from worker.settings import redact

P = ParamSpec("P")
T = TypeVar("T")


class ExpectedFailure(Exception):
    """A failure the user can act on: printed as one line, exit code 1."""


def expected_failures(command: Callable[P, T]) -> Callable[P, T]:
    """Turn errors a user can act on (bad input, a server that is down) into `ExpectedFailure`."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except IngestError as error:
            raise ExpectedFailure(redact(str(error))) from None
        except (DBAPIError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            if isinstance(error, BrokenPipeError) and stdout_reader_gone():
                raise  # `stats | head -1`: the output's reader left, no server failed; click ends quietly (exit 1)
            raise ExpectedFailure(redact(f"database unreachable or failing: {type(error).__name__}: {error}")) from None
        except RedisError as error:
            raise ExpectedFailure(redact(f"Redis unreachable: {type(error).__name__}: {error}")) from None
        except CeleryTimeout as error:
            raise ExpectedFailure(f"gave up waiting for results: {error}") from None

    return wrapper


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has closed it: a write there raised BrokenPipeError,
    not a connection to a server."""
    poller = select.poll()
    try:
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no stdout at all, no descriptor (a test's capture), a closed one
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def json_ready(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value
