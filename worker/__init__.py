"""The edge of tunix-rt ingest: the Celery app (`celery -A worker ...`), the enqueue API and the CLI."""

from services.errors import BatchConflict, BatchRejected, EnqueueFailed, IngestError, QueueFull, TraceError
from worker.celery_app import app
from worker.enqueue import BatchReceipt, enqueue_batch, enqueue_batch_async

__all__ = [
    "BatchConflict",
    "BatchReceipt",
    "BatchRejected",
    "EnqueueFailed",
    "IngestError",
    "QueueFull",
    "TraceError",
    "app",
    "enqueue_batch",
    "enqueue_batch_async",
]
