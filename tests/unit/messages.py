"""`ingest.batch` messages as a producer sends them (v1 inline, v2 claim check), for the server-free tier."""

from __future__ import annotations

import uuid
from typing import Any

from services.delivery.parsing import Limits
from services.validation import ValidatedBatch, validate_traces
from worker.localstack.sample_traces import generate_traces

LIMITS = Limits(max_batch=1000, max_bytes=8 * 1024 * 1024, max_deliveries=5)


def valid_batch(count: int = 3, seed: int = 42) -> ValidatedBatch:
    """`count` sample traces validated and encoded as the producer does."""
    return validate_traces(list(generate_traces(count, seed=seed)), max_batch=1000, max_bytes=8 * 1024 * 1024)


def inline_message(traces: list[Any], **changes: Any) -> dict[str, Any]:
    """A v1 message: the traces inline."""
    return {"batch_id": str(uuid.uuid4()), "source": "unit", "traces": traces, **changes}


def claim_check(valid: ValidatedBatch, **changes: Any) -> dict[str, Any]:
    """A v2 message naming `valid`'s body by trace count and content hash."""
    return {
        "batch_id": str(uuid.uuid4()),
        "source": "unit",
        "trace_count": len(valid.traces),
        "content_hash": valid.content_hash,
        "custody_seq": 7,
        **changes,
    }
