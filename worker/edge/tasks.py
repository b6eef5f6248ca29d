"""The ingest task, `ingest.batch`: thin, the delivery (worker.edge.delivery) does the work and decides between
a result and a retry. The scheduled jobs are in `worker.edge.scheduled_jobs`."""

from __future__ import annotations

from typing import Any

from celery import Task

from worker import keys
from worker.edge import delivery
from worker.edge.app import app

#: Characters of the result that Flower's task view and the success log line show: its head (batch id, source and,
#: unless the source is long, state, count, ingest time). The repr of all its 1,000 ids cost the pool process
#: 0.24 ms a task (measured); the result backend keeps the whole result.
RESULT_SHOWN_CHARS = 200


@app.task(
    bind=True,
    name=keys.INGEST_TASK,
    max_retries=None,  # the delivery budget decides: worker/edge/retry.py
    resultrepr_maxsize=RESULT_SHOWN_CHARS,
)
def ingest_batch(self: Task, *args: Any, **message: Any) -> dict[str, Any]:
    """Store one batch and publish its event. Safe to run again: rows are keyed by (batch_id, position).

    Transient errors retry with exponential backoff and full jitter while the batch's delivery budget lasts;
    then, or on any other error, the batch is parked as `failed` with its raw payload instead of being dropped.
    """
    if args:  # never trust the queue: let validation reject the stray arguments by name
        message = {**message, "positional_arguments": list(args)}
    outcome = delivery.handle(message, retries=self.request.retries)
    if isinstance(outcome, delivery.RetryIn):
        raise self.retry(countdown=outcome.seconds) from None
    return outcome
