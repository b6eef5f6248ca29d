"""The error hierarchy. The *type* decides what happens: permanent errors are never retried."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class _Problem(NamedTuple):
    trace_index: int | None
    field_path: str
    message: str


class TraceError(_Problem):
    """One problem with one trace; `trace_index` is None when the problem is the batch as a whole.

    A 3-tuple (`for index, field, message in rejected.errors`); `kind` names the rule that failed in pydantic's
    words ("missing", "string_too_short", …), the HTTP API's `type`, and is not part of the stored errors.
    """

    kind: str

    def __new__(cls, trace_index: int | None, field_path: str, message: str, kind: str = "value_error") -> TraceError:
        problem = super().__new__(cls, trace_index, field_path, message)
        problem.kind = kind
        return problem

    def __str__(self) -> str:
        where = "batch" if self.trace_index is None else f"trace {self.trace_index}"
        return f"{where}: {self.field_path}: {self.message}"


class IngestError(Exception):
    """Base of every error this package raises on purpose."""


class BatchRejected(IngestError):
    """The batch is invalid and will stay invalid: nothing of it was enqueued or stored. Never retried."""

    def __init__(self, errors: Sequence[TraceError]) -> None:
        self.errors: list[TraceError] = list(errors)
        shown = "; ".join(str(error) for error in self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        super().__init__(f"batch rejected, {len(self.errors)} problem(s): {shown}{more}")


class BatchSizeOutOfRange(BatchRejected):
    """The batch holds no trace, or more than the limit (the HTTP API answers these `400`, as the tunix-rt
    backend does)."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        reason = (
            "a batch needs at least one trace" if not count else f"{count} traces exceeds maximum of {limit} per batch"
        )
        super().__init__([TraceError(None, "traces", reason)])


class BatchTooLarge(BatchRejected):
    """The batch's JSON passes INGEST_MAX_BATCH_BYTES (the HTTP API answers `413`)."""


class BatchConflict(BatchRejected):
    """The batch id was already used for different traces: a producer bug, never a retry."""

    def __init__(self, batch_id: object) -> None:
        super().__init__(
            [TraceError(None, "batch_id", f"{batch_id} was already used for a batch with different traces")]
        )


class TransientError(IngestError):
    """A dependency was briefly unavailable; the same call may succeed later."""


class PublishFailed(TransientError):
    """The event could not be appended to the stream; the outbox sweep publishes it later."""


class EnqueueFailed(IngestError):
    """Redis could not be reached or did not confirm in time: the outcome is **unknown** (the batch may or may
    not have been accepted). Retry with the same `batch_id`, which never stores anything twice."""

    def __init__(self, message: str, batch_id: object = None) -> None:
        self.batch_id = batch_id
        super().__init__(message if batch_id is None else f"{message}; retry with batch_id {batch_id}")


class QueueFull(EnqueueFailed):
    """Backpressure: the ingest queue is over its depth limit and the batch was **not** accepted. Retry after
    `retry_after` seconds."""

    def __init__(self, depth: int, limit: int, retry_after: float, batch_id: object = None) -> None:
        self.depth = depth
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"ingest queue holds {depth} batches, at its limit of {limit}; retry in {retry_after:.0f} s", batch_id
        )
