from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.workers import WorkerProcess

#: Short timeouts so that crash recovery happens within a test's patience; the visibility timeout still
#: exceeds the task time limit plus the longest retry delay, as the settings insist.
FAST_RECOVERY = {
    "TASK_SOFT_TIME_LIMIT_S": "8",
    "TASK_TIME_LIMIT_S": "10",
    "RETRY_BACKOFF_MAX_S": "2",
    "MAX_RETRIES": "30",
    "VISIBILITY_TIMEOUT_S": "15",
    "UNACKED_RESTORE_INTERVAL_S": "2",
}

StartWorker = Callable[..., WorkerProcess]


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
