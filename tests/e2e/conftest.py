from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.workers import WorkerProcess


@pytest.fixture
def worker_process() -> Iterator[WorkerProcess]:
    """A prefork worker with two children, stopped (or killed) after the test."""
    process = WorkerProcess("e2e").start()
    yield process
    if process.stop() is None:
        pytest.fail(f"worker did not stop on SIGTERM:\n{process.log()[-2000:]}")
