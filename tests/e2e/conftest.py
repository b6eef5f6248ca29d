from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.workers import WorkerProcess
from worker.localstack.processes import ChildProcess, celery_command

#: Short timeouts so that crash recovery happens within a test's patience; the visibility timeout still
#: exceeds the task time limit plus the longest retry delay, as the settings insist.
FAST_RECOVERY = {
    "TASK_SOFT_TIME_LIMIT_S": "8",
    "TASK_TIME_LIMIT_S": "10",
    "RETRY_BACKOFF_MAX_S": "2",
    "MAX_DELIVERIES": "30",
    "VISIBILITY_TIMEOUT_S": "15",
    "UNACKED_RESTORE_INTERVAL_S": "2",
}

#: The scheduled jobs every second, so a lost batch is found soon after `custody.lost_after_s` (35 s here).
FAST_SCHEDULE = {"SWEEP_INTERVAL_S": "1", "RESEND_INTERVAL_S": "1"}

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(autouse=True)
def _every_test_has_servers(servers: None) -> None:
    """End-to-end tests run real processes against the real PostgreSQL and Redis of the session."""


StartBeat = Callable[[dict[str, str]], ChildProcess]


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """Start named worker nodes (`env` overrides settings); all are stopped, or killed, after the test."""
    started: list[WorkerProcess] = []

    def start(name: str = "e2e", **options: object) -> WorkerProcess:
        process = WorkerProcess(name, **options)  # type: ignore[arg-type]
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def worker_process(start_worker: StartWorker) -> WorkerProcess:
    """A prefork worker with two children."""
    return start_worker("e2e")


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[StartBeat]:
    """Start `celery beat` with `env` overriding settings; stopped after the test."""
    started: list[ChildProcess] = []

    def start(env: dict[str, str]) -> ChildProcess:
        beat = ChildProcess(
            "beat", celery_command("beat", "--loglevel", "INFO"), tmp_path / "beat.log", env={**os.environ, **env}
        )
        started.append(beat.start())
        beat.wait_for_log(b"beat: Starting")
        return beat

    yield start
    for beat in started:
        beat.stop()
