"""Every signal handler of the product is connected in one place (worker.edge.lifecycle) and acts only in a worker
of this app: another Celery app's worker in a process that imported `worker` is left alone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals

from worker.edge import heap, heartbeat, lifecycle, progress, redis_policy
from worker.edge import runtime as worker_runtime

FOREIGN_WORKER = SimpleNamespace(app=SimpleNamespace(main="someone_else"), hostname="other@host")


def test_every_handler_is_connected_once_in_its_order() -> None:
    lifecycle.connect_signal_handlers()  # again: nothing more is connected
    for signal in {signal for signal, _ in lifecycle.HANDLERS}:
        ours = [receiver for receiver in signal.receivers if str(receiver[0][0]).startswith("tunix-ingest:")]
        expected = [handler for connected_to, handler in lifecycle.HANDLERS if connected_to is signal]
        assert [str(receiver[0][0]).rsplit(".", 1)[1] for receiver in ours] == [h.__name__ for h in expected]
    assert next(handler.__name__ for signal, handler in lifecycle.HANDLERS if signal is signals.worker_init) == (
        "name_this_worker"  # first: every other handler needs the name
    )


def test_another_apps_worker_gets_no_name_and_no_handler_acts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNIX_INGEST_WORKER_ID", raising=False)
    acted: list[str] = []

    def record(name: str) -> Any:
        return lambda *args, **kwargs: acted.append(name)

    monkeypatch.setattr(redis_policy, "_problem", record("checked Redis"))
    monkeypatch.setattr(worker_runtime, "current_runtime", record("started a runtime"))
    monkeypatch.setattr(worker_runtime, "stop_runtime", record("stopped a runtime"))
    monkeypatch.setattr(heap, "_LIBC", SimpleNamespace(malloc_trim=record("trimmed the heap")))
    monkeypatch.setattr(heap, "TRIM_EVERY_TASKS", 1)
    monkeypatch.setattr(progress, "_write", record("wrote progress"))
    request = SimpleNamespace(name="ingest.batch", kwargs={"batch_id": "b", "custody_seq": 1})
    task = SimpleNamespace(name="ingest.batch")

    for _, handler in lifecycle.HANDLERS:
        lifecycle.in_this_apps_worker(handler)(
            sender=FOREIGN_WORKER, request=request, task=task, retval={"state": "ingested"}, state="SUCCESS"
        )

    assert heartbeat.current_worker_id() == ""
    assert acted == []


def test_this_apps_worker_is_named_and_its_handlers_act(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNIX_INGEST_WORKER_ID", raising=False)
    trimmed: list[int] = []
    monkeypatch.setattr(heap, "_LIBC", SimpleNamespace(malloc_trim=trimmed.append))
    monkeypatch.setattr(heap, "TRIM_EVERY_TASKS", 1)
    ours = SimpleNamespace(app=SimpleNamespace(main="tunix_ingest"), hostname="ingest@host")

    lifecycle.in_this_apps_worker(heartbeat.name_this_worker)(sender=ours)
    lifecycle.in_this_apps_worker(heap.return_freed_memory)(sender=None)

    assert heartbeat.current_worker_id().startswith("ingest@host#") and trimmed == [0]
