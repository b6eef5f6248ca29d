"""tunix-rt ingest's edge: the Celery app (`celery -A worker ...`) and the public API. Its packages, by purpose,
are listed in docs/architecture.md ("Modules").

The names below are imported on first use (PEP 562): `import worker.cli.follow` or `from worker import
follow_ingested` does not build the Celery app, which alone takes most of a command's start-up; `worker.app`
(what `celery -A worker` looks up) builds it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.errors import BatchConflict, BatchRejected, EnqueueFailed, IngestError, QueueFull, TraceError
    from worker.client.consumer import (
        IngestedBatch,
        IngestedLines,
        follow_ingested,
        follow_ingested_async,
        follow_ingested_lines_async,
    )
    from worker.client.enqueue import BatchReceipt, enqueue_batch, enqueue_batch_async
    from worker.edge.app import app

_HOMES = {
    "services.errors": ["BatchConflict", "BatchRejected", "EnqueueFailed", "IngestError", "QueueFull", "TraceError"],
    "worker.edge.app": ["app"],
    "worker.client.consumer": [
        "IngestedBatch",
        "IngestedLines",
        "follow_ingested",
        "follow_ingested_async",
        "follow_ingested_lines_async",
    ],
    "worker.client.enqueue": ["BatchReceipt", "enqueue_batch", "enqueue_batch_async"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BatchConflict",
    "BatchReceipt",
    "BatchRejected",
    "EnqueueFailed",
    "IngestError",
    "IngestedBatch",
    "IngestedLines",
    "QueueFull",
    "TraceError",
    "app",
    "enqueue_batch",
    "enqueue_batch_async",
    "follow_ingested",
    "follow_ingested_async",
    "follow_ingested_lines_async",
]


if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name stays an error for them

    def __getattr__(name: str) -> Any:
        home = _HOME_OF.get(name)
        if home is None:
            raise AttributeError(f"module 'worker' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # looked up once
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
