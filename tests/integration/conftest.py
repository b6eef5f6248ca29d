from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis


@pytest.fixture(autouse=True)
def _every_test_has_servers(servers: None) -> None:
    """Integration tests talk to the real PostgreSQL and Redis of the session."""


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An async client of the session's Redis, closed after the test (consumers' and streams' tests)."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()
