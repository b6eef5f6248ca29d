"""The Redis Stream publisher handed to the services."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.errors import PublishFailed


class RedisStreamPublisher:
    """Appends events to one stream, capped with an approximate MAXLEN so it never grows without bound.

    With `replicas` (`INGEST_REDIS_MIN_REPLICAS`), an event counts as out only once that many replicas hold it:
    a batch is marked published after its event is out, and a failover that promotes a replica which never saw
    the entry would otherwise lose the event for good. Short of the count, `PublishFailed` leaves the batch
    unpublished and the outbox sweep publishes it again (at least once, PRODUCT.md §6).
    """

    def __init__(self, client: Redis, stream: str, maxlen: int, *, replicas: int = 0, replica_timeout_ms: int = 0):
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms

    async def publish(self, fields: dict[str, str]) -> None:
        try:
            # One pipeline, so the WAIT runs on the connection that wrote the entry (WAIT counts only its writes).
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                if self.replicas:
                    pipe.wait(self.replicas, self.replica_timeout_ms)
                _, *replicated = await pipe.execute()
        except RedisError as error:
            raise PublishFailed(f"could not append to stream {self.stream}: {type(error).__name__}") from None
        if replicated and int(replicated[0]) < self.replicas:
            raise PublishFailed(
                f"the event reached {int(replicated[0])} of {self.replicas} Redis replicas "
                f"within {self.replica_timeout_ms} ms"
            )
