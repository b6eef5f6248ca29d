"""The beat schedule. Beat only enqueues; the work runs on the `reprocess` queue, one session per task.
Exactly one beat fires at a time: RedBeat holds a lock in Redis (`redbeat::lock`)."""

from __future__ import annotations

from typing import Any

#: Queue of scheduled and operator jobs, kept apart so they never wait behind a backlog of batches.
REPROCESS_QUEUE = "reprocess"


def beat_schedule(sweep_s: float, resend_s: float, redrive_s: float, refresh_s: float) -> dict[str, dict[str, Any]]:
    """Each entry expires shortly before its next run, so a backlog never piles up copies of the same job."""

    def entry(task: str, every: float) -> dict[str, Any]:
        return {"task": task, "schedule": every, "options": {"queue": REPROCESS_QUEUE, "expires": every * 0.9}}

    return {
        "publish-unpublished-batches": entry("reprocess.sweep", sweep_s),
        "resend-lost-batches": entry("reprocess.resend_lost", resend_s),
        "redrive-failed-batches": entry("reprocess.redrive", redrive_s),
        "refresh-derived-fields": entry("reprocess.refresh_derived", refresh_s),
    }
