"""What one delivery of an `ingest.batch` message does, decided from the message, its body, the limits and the
delivery count alone: no session, no I/O. `deliver` carries the decision out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from models.messages import BatchTicket
from services.delivery.parked_rows import declared_batch_id
from services.delivery.parsing import Limits, body_missing, envelope, parse_delivery
from services.errors import BatchRejected, TraceError
from services.validation import BatchIn


@dataclass(frozen=True)
class SettleMissingBody:
    """A claim check whose body custody no longer had: complete it if PostgreSQL holds it, else park it."""

    ticket: BatchTicket


@dataclass(frozen=True)
class ParkUnread:
    """Past the delivery budget: park it as it came, never reading it again (complete it if PostgreSQL holds
    it under `batch_id`)."""

    batch_id: UUID | None
    reason: str


@dataclass(frozen=True)
class Reject:
    """Invalid, and it will stay so: keep it as `rejected` with these errors."""

    errors: list[TraceError]


@dataclass(frozen=True)
class Store:
    """Valid: store this batch."""

    batch: BatchIn


Decision = SettleMissingBody | ParkUnread | Reject | Store


def decide(message: Any, body: bytes | None, limits: Limits, attempts: int) -> Decision:
    """What to do with this delivery, the `attempts`-th of its batch. Validates the message (and its body)
    unless it is past its budget: reading it may be what failed, or crashed the process, every time.
    Raises only what nobody foresaw (the edge then parks the message unread)."""
    try:
        if body_missing(message, body):
            return SettleMissingBody(envelope(BatchTicket, message))
        if attempts > limits.max_deliveries:
            return ParkUnread(declared_batch_id(message), f"delivered {attempts} times without being stored")
        return Store(parse_delivery(message, body, limits))
    except BatchRejected as rejected:
        return Reject(rejected.errors)
