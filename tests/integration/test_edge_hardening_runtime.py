"""The worker's per-host edges (issue #18): ending an abandoned runtime's sessions touches only this host's, and
a worker started from code (not by the `celery worker` command) beats like any other."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from celery.contrib.testing.worker import start_worker

import worker.edge.runtime
from tests.db import query
from tests.polling import wait_for
from tests.runtimes import end_held_transaction, ended_by_cancelling, hold_a_transaction_open
from worker import app
from worker.edge.heartbeat import current_worker_id
from worker.edge.runtime import Runtime, current_runtime, replace_abandoned_runtime, stop_runtime
from worker.keys import heartbeat_key
from worker.settings import get_settings

_STATES = "SELECT state FROM pg_stat_activity WHERE application_name = :name"
_IDENTITY = "TUNIX_INGEST_WORKER_ID"


@pytest.fixture
def other_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """A runtime as a pool child of another pod would make it: the same PID and generation as this process's
    current one (pool-child PIDs repeat across containers), another host and worker node."""
    here = current_runtime()
    generation = worker.edge.runtime._generation
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(socket, "gethostname", lambda: "ingest-worker-7f9c4-other")
        elsewhere.setenv(_IDENTITY, f"worker@ingest-worker-7f9c4-other#{here.pid}#1700000000")
        other = Runtime(get_settings(), generation)
    yield other
    other.close()


def test_ending_an_abandoned_runtime_leaves_a_same_pid_session_of_another_host_alone(
    database_url: str, other_host: Runtime
) -> None:
    abandoned = current_runtime()
    half_run = hold_a_transaction_open(abandoned)
    busy_elsewhere = hold_a_transaction_open(other_host)

    replacement = replace_abandoned_runtime()
    try:
        assert replacement is not abandoned
        assert query(database_url, _STATES, name=abandoned.application_name) == []
        assert [row.state for row in query(database_url, _STATES, name=other_host.application_name)] == [
            "idle in transaction"
        ]
    finally:
        end_held_transaction(other_host, busy_elsewhere)
        stop_runtime()
    assert abandoned.loop.is_closed() and ended_by_cancelling(half_run)


def test_a_worker_started_from_code_writes_its_heartbeat(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_IDENTITY, raising=False)  # restored after the test: the worker names itself in os.environ
    client = redis.Redis.from_url(redis_url)
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingest"], loglevel="WARNING"):
        worker_id = current_worker_id()
        assert worker_id, "the in-process worker did not name itself"
        beating = wait_for(lambda: client.exists(heartbeat_key(worker_id)), timeout=10, what="the heartbeat key")
    stop_runtime()

    assert beating
