"""Settings, credential redaction, error classification and the JSONL reader: pure logic."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.errors import BatchConflict, BatchRejected, PublishFailed, QueueFull, TraceError
from worker.cli.common import ExpectedFailure, expected_failures
from worker.client.jsonl import read_jsonl
from worker.edge.app import celery_config
from worker.edge.retry import decide, is_transient
from worker.localstack.processes import worker_command
from worker.settings import Settings, environment, get_settings, redact

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        (
            "rediss://user:p%40ss@h:1/0 and postgresql+asyncpg://u:x@db/n",
            "rediss://user:***@h:1/0 and postgresql+asyncpg://u:***@db/n",
        ),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),  # a password holding '@'
        ("redis://default:p:a@s:s@host/0 ok", "redis://default:***@host/0 ok"),
        ("rediss://:pw@host:6380/0?ssl_cert_reqs=required", "rediss://:***@host:6380/0?ssl_cert_reqs=required"),
        ("redis://host:6379/0?password=hunter2&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix://user@/run/redis.sock?db=0&password=hunter2", "unix://user@/run/redis.sock?db=0&password=***"),
        ("redis://u:a%40b@h/0, redis://:c@h2/1", "redis://u:***@h/0, redis://:***@h2/1"),
        ("no url here: user@example.com", "no url here: user@example.com"),
    ],
)
def test_redact_hides_every_password_in_urls(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_importing_worker_leaves_other_celery_apps_json_as_it_was() -> None:
    from celery import Celery
    from kombu.serialization import dumps, loads
    from kombu.transport import get_transport_cls
    from kombu.transport import redis as kombu_redis
    from kombu.utils import json as kombu_json

    import worker  # noqa: F401  the import under test

    other_app = Celery("someone-else", broker="memory://")
    when = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    content_type, encoding, body = dumps({"when": when, "id": uuid.UUID(int=7)}, serializer="json")
    assert loads(body, content_type, encoding) == {"when": when, "id": uuid.UUID(int=7)}
    assert kombu_redis.dumps is kombu_json.dumps and kombu_redis.loads is kombu_json.loads  # type: ignore[attr-defined]
    assert other_app.conf.task_serializer == "json"
    # The transports that survive a broken connection are installed in `celery worker` processes only.
    assert get_transport_cls("redis") is kombu_redis.Transport
    assert get_transport_cls("sentinel") is kombu_redis.SentinelTransport


def test_secrets_never_print_with_the_settings() -> None:
    settings = Settings(redis_url=SecretStr("redis://:topsecret@h:1/0"))
    assert "topsecret" not in repr(settings) and "topsecret" not in str(settings.model_dump())


def test_visibility_timeout_must_exceed_the_longest_task_and_retry_delay() -> None:
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT_S"):
        celery_config(Settings(visibility_timeout_s=60, task_time_limit_s=50, retry_backoff_max_s=20))


def test_celery_is_configured_json_only_with_late_acks() -> None:
    config = celery_config(Settings())
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_acks_on_timeout"] is False  # a task cut by the hard time limit goes back to the queue
    assert {queue.name for queue in config["task_queues"]} == {"ingest", "reprocess"}  # a plain worker takes both


def test_workers_started_without_queues_consume_the_configured_ingest_queue() -> None:
    """The Procfile, compose and the local stack name no queue: a worker takes what the app declares, so the
    ingest queue follows INGEST_QUEUE as producers' routing does."""
    with environment(INGEST_QUEUE="ingest-blue"):
        config = celery_config(get_settings())
    assert {queue.name for queue in config["task_queues"]} == {"ingest-blue", "reprocess"}
    assert next(iter(config["task_routes"].values())) == {"queue": "ingest-blue"}
    assert "-Q" not in worker_command("local") and "--queues" not in (ROOT / "Procfile").read_text()


def test_rediss_urls_get_certificate_verification() -> None:
    config = celery_config(Settings(redis_url=SecretStr("rediss://:pw@h:6380/0")))
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": 2}  # ssl.CERT_REQUIRED
    assert celery_config(Settings())["broker_use_ssl"] is None


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        RedisConnectionError(),
        SoftTimeLimitExceeded(),
        PublishFailed("x"),
        DBAPIError("SELECT 1", {}, asyncpg.exceptions.CannotConnectNowError("starting up")),
    ],
)
def test_connection_loss_and_timeouts_are_transient(error: BaseException) -> None:
    assert is_transient(error)


def test_a_transient_error_retries_with_backoff_while_the_delivery_budget_lasts_then_parks() -> None:
    settings = Settings(max_deliveries=5, retry_backoff_max_s=10)
    retries = [decide(ConnectionResetError(), deliveries=n, settings=settings) for n in range(1, 5)]
    assert all(1 <= (d.retry_in or 0) <= 10 for d in retries)
    assert decide(ConnectionResetError(), deliveries=5, settings=settings).retry_in is None  # budget spent
    lock_timeout = DBAPIError("INSERT", {}, asyncpg.exceptions.LockNotAvailableError("lock timeout"))
    assert decide(lock_timeout, deliveries=1, settings=settings).retry_in is not None


def test_errors_that_no_retry_can_fix_park_at_once_with_a_redacted_reason() -> None:
    missing = decide(FileNotFoundError("/etc/missing"), deliveries=1, settings=Settings())
    assert missing.retry_in is None and missing.reason == "FileNotFoundError: /etc/missing"
    bug = decide(ValueError("redis://:hunter2@h/0 broke"), deliveries=1, settings=Settings())
    assert bug.retry_in is None and "hunter2" not in bug.reason


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        ResponseError("WRONGTYPE"),
        IntegrityError("INSERT", {}, Exception("dup")),
        FileNotFoundError("x"),
        PermissionError("x"),
    ],
)
def test_bugs_and_bad_data_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_invalidated_connections_are_transient() -> None:
    error = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient(error)


def test_jsonl_lines_are_numbered_and_each_bad_line_says_why() -> None:
    lines = [b'{"a": 1}\n', b"\n", b"{not json\n", b"\xff\xfe\n", b"[1, 2]\n", b'{"b": 2}']
    read = list(read_jsonl(lines))
    assert [(line.number, line.value) for line in read if line.value] == [(1, {"a": 1}), (6, {"b": 2})]
    problems = {line.number: line.problem for line in read if line.problem}
    assert set(problems) == {3, 4, 5}
    assert "not valid JSON" in str(problems[3])
    assert "not valid UTF-8" in str(problems[4])
    assert "JSON object" in str(problems[5])


def test_error_messages_name_the_problem() -> None:
    assert "retry in 5 s" in str(QueueFull(12, 10, retry_after=5))
    assert "different traces" in str(BatchConflict("b1"))
    many = BatchRejected([TraceError(i, "prompt", "bad") for i in range(12)])
    assert "12 problem(s)" in str(many) and "(and 2 more)" in str(many)


def _failing_with(error: BaseException) -> Callable[[], None]:
    @expected_failures
    def command() -> None:
        raise error

    return command


def test_a_broken_pipe_is_a_server_failure_unless_stdout_lost_its_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = BrokenPipeError(32, "Broken pipe")
    reader, writer = os.pipe()
    with os.fdopen(writer, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        with pytest.raises(ExpectedFailure, match="database unreachable or failing: BrokenPipeError"):
            _failing_with(broken)()  # stdout's reader is still there: a connection broke
        os.close(reader)
        with pytest.raises(BrokenPipeError):  # the reader left: the end of the output, which click ends quietly
            _failing_with(broken)()
        monkeypatch.setattr(sys, "stdout", None)  # started with no stdout at all
        with pytest.raises(ExpectedFailure):
            _failing_with(broken)()
