"""Configuration from the environment (and `.env`). Only the edge (`worker/`) reads it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the ingest worker. Secrets are `SecretStr` so they never print by accident."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/tunix")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    #: With a `sentinel://h1:26379;sentinel://h2:26379` REDIS_URL: the monitored master's name (PRODUCT.md §12).
    redis_sentinel_master: str | None = None
    #: The Sentinels' own password (`requirepass` in sentinel.conf); the master's is the one in REDIS_URL.
    redis_sentinel_password: SecretStr | None = None
    #: Replicas that must hold a batch's custody before `enqueue_batch` returns (Redis WAIT); 0: no wait.
    ingest_redis_min_replicas: int = Field(0, ge=0)
    #: How long a producer waits for those replicas before raising `EnqueueFailed` (outcome unknown).
    ingest_redis_replica_timeout_ms: int = Field(2000, ge=1)

    ingest_queue: str = "ingest"
    ingest_max_batch: int = Field(1000, ge=1, le=10_000)
    ingest_max_batch_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: The most one `POST /api/traces/jsonl` body may hold (413 beyond it). Its lines are read as they arrive,
    #: so memory stays at about two batches' bytes whatever this is; it bounds one request's time and receipts.
    ingest_max_jsonl_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    #: Batches waiting before producers get `QueueFull`; with the body sizes it bounds Redis's backlog memory
    #: (docs/operations.md, "Redis memory").
    ingest_max_queue_depth: int = Field(1_000, ge=1)
    ingest_events_stream: str = "traces:ingested"
    #: Approximate cap of the event stream: ~9 KB per 1,000-trace event, so ~0.9 GB at most by default.
    ingest_events_maxlen: int = Field(100_000, ge=1)
    #: How long a producer's batch id is remembered for conflict detection at enqueue time.
    ingest_batch_key_ttl_s: int = Field(7 * 24 * 3600, ge=60)

    #: Redis redelivers an unacked message after this long: the recovery bound for a dead worker host.
    #: Must stay above the longest task plus the longest retry delay (checked in `worker.edge.app.celery_config`).
    visibility_timeout_s: int = Field(300, ge=10)
    #: How often a worker looks for unacked messages older than the visibility timeout (one ZRANGE).
    #: A dead host's batches come back within visibility_timeout_s + unacked_restore_interval_s (plus, if the
    #: host died during a scan, the scan lock's expiry: max(10, 2 * this interval)).
    unacked_restore_interval_s: int = Field(10, ge=1)
    task_soft_time_limit_s: int = Field(60, ge=1)
    task_time_limit_s: int = Field(90, ge=2)
    retry_backoff_max_s: int = Field(60, ge=1)
    #: The one budget of a batch: deliveries (retries after transient errors and redeliveries after crashes
    #: alike) before it is parked as `failed`. With full-jitter backoff capped at RETRY_BACKOFF_MAX_S, 12
    #: deliveries ride out an outage of a few minutes.
    max_deliveries: int = Field(12, ge=1)
    #: Times the scheduled re-drive sends one `failed` batch back before leaving it to an operator.
    max_redrives: int = Field(3, ge=0)
    #: The outbox sweep leaves batches younger than this alone: their own worker is most likely publishing them.
    sweep_grace_s: int = Field(30, ge=0)
    #: How often beat schedules the outbox sweep, the re-drive of failed batches and the derived-field refresh.
    sweep_interval_s: float = Field(30, gt=0)
    #: How often beat looks for batches to send again: lost in transit, or taken by a worker whose heartbeat
    #: stopped. A dead worker's batches come back within HEARTBEAT_TTL_S (10 s) plus this.
    resend_interval_s: float = Field(5, gt=0)
    redrive_interval_s: float = Field(300, gt=0)
    refresh_interval_s: float = Field(600, gt=0)
    #: Rows per derived-field refresh task: one transaction and a few MB of memory each.
    refresh_chunk_size: int = Field(2000, ge=1)
    result_expires_s: int = Field(6 * 3600, ge=60)
    worker_max_tasks_per_child: int = Field(1000, ge=1)
    worker_max_memory_per_child_kb: int = Field(512 * 1024, ge=1024)
    db_pool_size: int = Field(2, ge=1)

    @property
    def unacked_mutex_expire_s(self) -> int:
        """How long the lock of kombu's unacked-message scan outlives a worker that died holding it."""
        return max(10, 2 * self.unacked_restore_interval_s)

    #: Bearer tokens of the HTTP API, comma-separated. When set, every /api request needs one; without them
    #: every /api request is refused (401) unless INGEST_API_ALLOW_ANONYMOUS is set.
    ingest_api_tokens: SecretStr | None = None
    #: Without tokens, answer anonymous /api requests that arrive on loopback and carry no forwarding header: an
    #: explicit opt-in for a development server (`tunix-ingest run` sets it for its own), since a same-host proxy
    #: that adds no such header makes every request look local. Logged as a warning at start.
    ingest_api_allow_anonymous: bool = False
    #: "user:password" for Flower's basic auth; required when Flower listens beyond loopback.
    flower_basic_auth: SecretStr | None = None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()


# The user info of a URL ends at the *last* `@` before the host: a password may hold `@` and `:` itself.
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<secret>[^/\s]+)@", re.I)
_PASSWORD_IN_QUERY = re.compile(r"(?P<name>[?&](?:sentinel_)?password=)[^&\s]+", re.I)


def redact(text: str) -> str:
    """`text` with the password of every URL in it (user info or `password=` query) replaced by `***`."""
    return _PASSWORD_IN_QUERY.sub(r"\g<name>***", _CREDENTIALS_IN_URL.sub(r"\g<scheme>\g<user>:***@", text))


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by child processes) and the settings read from them, for a while."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
