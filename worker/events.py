"""The Redis Stream publisher handed to the services."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.errors import PublishFailed


class RedisStreamPublisher:
    """Appends events to one stream, capped with an approximate MAXLEN so it never grows without bound."""

    def __init__(self, client: Redis, stream: str, maxlen: int) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen

    async def publish(self, fields: dict[str, str]) -> None:
        try:
            await self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        except RedisError as error:
            raise PublishFailed(f"could not append to stream {self.stream}: {type(error).__name__}") from None
