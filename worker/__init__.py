"""tunix-rt ingest's edge: the Celery app (`celery -A worker ...`), the producer and consumer APIs, the CLI.

The tree, by purpose: this package's modules are the Celery edge (app, tasks, per-process runtime, beat,
settings, wire format, Redis connections); `client/` is what applications import (enqueue, JSONL, custody,
consumers); `http_api/` the HTTP enqueue API; `cli/` the `tunix-ingest` commands and their helpers;
`devtools/` the local stack and the bench.
"""

from services.errors import BatchConflict, BatchRejected, EnqueueFailed, IngestError, QueueFull, TraceError
from worker.celery_app import app
from worker.client.consumer import IngestedBatch, follow_ingested, follow_ingested_async
from worker.client.enqueue import BatchReceipt, enqueue_batch, enqueue_batch_async

__all__ = [
    "BatchConflict",
    "BatchReceipt",
    "BatchRejected",
    "EnqueueFailed",
    "IngestError",
    "IngestedBatch",
    "QueueFull",
    "TraceError",
    "app",
    "enqueue_batch",
    "enqueue_batch_async",
    "follow_ingested",
    "follow_ingested_async",
]
