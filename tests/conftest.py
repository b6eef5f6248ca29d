"""Session-wide throwaway PostgreSQL and Redis on free loopback ports (or TEST_DATABASE_URL / TEST_REDIS_URL).

Started only for the tests that need them: `tests/integration` and `tests/e2e` use them for every test (their
conftest's `servers` fixture); `tests/unit` is pure logic and runs with no server binary installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import worker.edge.scheduled_jobs
import worker.edge.tasks  # noqa: F401
from tests.db import query
from worker.cli.migrate import upgrade_to_head
from worker.edge.app import app
from worker.localstack.servers import PostgresServer, RedisServer
from worker.settings import environment

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop before any test runs if collecting configured the Celery app: its settings were read then, before the
    session's fixtures point them at the test servers, so it would talk to the default Redis. The usual cause is a
    task object in a test module's namespace (pytest's collection looks at its attributes): reach the task
    through its module instead."""
    if app.configured:
        raise pytest.UsageError(
            "the Celery app was configured while the tests were collected, before the session's servers were set; "
            "import task modules, not task objects, into test modules"
        )


@contextmanager
def _throwaway(server: PostgresServer | RedisServer, external_url_variable: str) -> Iterator[Any]:
    """Start `server` for the session unless the environment names an external one (then yield None)."""
    if os.environ.get(external_url_variable):
        yield None
        return
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    with _throwaway(PostgresServer(Path(tempfile.mkdtemp(prefix="tunix-test-pg-"))), "TEST_DATABASE_URL") as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    with _throwaway(RedisServer(Path(tempfile.mkdtemp(prefix="tunix-test-redis-"))), "TEST_REDIS_URL") as server:
        yield server


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer | None) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or (postgres.url if postgres else "")
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("TEST_REDIS_URL") or (redis_server.url if redis_server else "")


@pytest.fixture(scope="session")
def service_environment(database_url: str, redis_url: str) -> Iterator[None]:
    """Point the settings (and every subprocess the tests start) at the test servers."""
    with environment(DATABASE_URL=database_url, REDIS_URL=redis_url):
        yield


@pytest.fixture
def clean_data(database_url: str, redis_url: str) -> None:
    """Every test starts with empty tables and an empty Redis."""
    redis.Redis.from_url(redis_url).flushall()
    query(database_url, "TRUNCATE trace, batch RESTART IDENTITY CASCADE")


@pytest.fixture
def servers(service_environment: None, clean_data: None) -> None:
    """The settings (and every subprocess) point at the test servers, and each test starts with no data."""


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
