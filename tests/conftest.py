"""Session-wide throwaway PostgreSQL and Redis on free loopback ports (or TEST_DATABASE_URL / TEST_REDIS_URL)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import worker.tasks  # noqa: F401  register the tasks before any fixture app exists
from worker.local_stack import PostgresServer, RedisServer
from worker.migrate import upgrade_to_head
from worker.settings import get_settings

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="tunix-test-pg-")))
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = RedisServer(Path(tempfile.mkdtemp(prefix="tunix-test-redis-")))
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def database_url(postgres: PostgresServer | None) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or (postgres.url if postgres else "")
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("TEST_REDIS_URL") or (redis_server.url if redis_server else "")


@pytest.fixture(scope="session", autouse=True)
def service_environment(database_url: str, redis_url: str) -> Iterator[None]:
    """Point the settings (and every subprocess the tests start) at the test servers."""
    saved = {key: os.environ.get(key) for key in ("DATABASE_URL", "REDIS_URL")}
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    get_settings.cache_clear()
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def clean_data(database_url: str, redis_url: str) -> None:
    """Every test starts with empty tables and an empty Redis."""
    redis.Redis.from_url(redis_url).flushall()
    _truncate(database_url)


def _truncate(database_url: str) -> None:
    import asyncio

    async def truncate() -> None:
        engine = create_async_engine(database_url)
        async with engine.begin() as connection:
            await connection.execute(text("TRUNCATE trace, batch RESTART IDENTITY CASCADE"))
        await engine.dispose()

    asyncio.run(truncate())


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
