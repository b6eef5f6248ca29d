"""What the commands share: a database session for one command, and turning known errors into one line."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from services.errors import IngestError
from worker.settings import get_settings, redact

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
        except (DBAPIError, OSError) as error:
            raise ExpectedFailure(redact(f"database unreachable or failing: {type(error).__name__}: {error}")) from None
        except RedisError as error:
            raise ExpectedFailure(redact(f"Redis unreachable: {type(error).__name__}: {error}")) from None

    return wrapper


def with_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` with one session on a short-lived engine: a CLI command is one unit of work."""

    async def run() -> T:
        engine = create_async_engine(get_settings().database_url.get_secret_value(), pool_size=1)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def json_ready(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value
