"""The beat schedule. Beat only enqueues; the work runs on the `reprocess` queue, one session per task.
Exactly one beat fires at a time: RedBeat holds a lock in Redis (`redbeat::lock`)."""

from __future__ import annotations

from typing import Any

#: Queue of scheduled and operator jobs, kept apart so they never wait behind a backlog of batches.
REPROCESS_QUEUE = "reprocess"

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "publish-unpublished-batches": {
        "task": "reprocess.sweep",
        "schedule": 30.0,
        "options": {"queue": REPROCESS_QUEUE, "expires": 25},
    },
    "redrive-failed-batches": {
        "task": "reprocess.redrive",
        "schedule": 300.0,
        "options": {"queue": REPROCESS_QUEUE, "expires": 240},
    },
    "refresh-derived-fields": {
        "task": "reprocess.refresh_derived",
        "schedule": 600.0,
        "options": {"queue": REPROCESS_QUEUE, "expires": 540},
    },
}
