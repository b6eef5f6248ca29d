"""The per-process runtime: created on first use, replaced (never reused) after an interrupted task."""

from __future__ import annotations

from worker.runtime import abandon_runtime, current_runtime, stop_runtime


def test_runtime_is_created_once_per_process_and_replaced_after_abandon() -> None:
    first = current_runtime()
    assert current_runtime() is first
    abandon_runtime()
    second = current_runtime()
    try:
        assert second is not first and second.loop is not first.loop
    finally:
        stop_runtime()
        first.close()
    assert first.loop.is_closed() and second.loop.is_closed()
