"""Reading a delivered message: v1 or v2, its envelope, and the re-drivable payload of a valid batch."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from models.compiled_schema import as_plain
from models.messages import BatchMessage, BatchTicket
from services.delivery.parsing import body_missing, envelope, failed_payload, is_claim_check, parse_delivery
from services.errors import BatchRejected
from services.validation import BatchIn
from tests.unit.messages import LIMITS, claim_check, inline_message, valid_batch


def test_a_message_without_traces_is_a_claim_check_and_one_with_traces_is_not() -> None:
    valid = valid_batch(1)

    assert is_claim_check(claim_check(valid))
    assert not is_claim_check(inline_message(valid.traces))
    assert not is_claim_check(["not", "a", "mapping"])


def test_only_a_claim_check_without_its_body_misses_its_body() -> None:
    valid = valid_batch(1)

    assert body_missing(claim_check(valid), None)
    assert not body_missing(claim_check(valid), valid.body)
    assert not body_missing(inline_message(valid.traces), None)


def test_an_envelope_reads_the_message_as_its_schema() -> None:
    message = claim_check(valid_batch(2), enqueued_at="2026-11-27T10:00:00Z")

    ticket = envelope(BatchTicket, message)

    assert ticket.batch_id == uuid.UUID(message["batch_id"])
    assert (ticket.trace_count, ticket.custody_seq) == (2, 7)
    assert ticket.enqueued_at == datetime(2026, 11, 27, 10, tzinfo=UTC)


def test_an_envelope_that_does_not_fit_names_every_field_in_the_batch() -> None:
    with pytest.raises(BatchRejected) as caught:
        envelope(BatchMessage, {"batch_id": 12, "traces": "many"})

    assert {(error.trace_index, error.field_path) for error in caught.value.errors} == {
        (None, "batch_id"),
        (None, "source"),
        (None, "traces"),
    }


def stored_as_redriven(batch: BatchIn) -> BatchIn:
    """The batch a re-drive reads back from the payload kept when `batch` was parked as `failed`."""
    return parse_delivery(json.loads(failed_payload(batch)), None, LIMITS)


@pytest.mark.parametrize("enqueued_at", [None, "2026-11-27T10:00:00+00:00"], ids=["no enqueue time", "enqueued"])
def test_a_failed_payload_of_an_inline_batch_reads_back_as_the_same_batch(enqueued_at: str | None) -> None:
    changes = {"enqueued_at": enqueued_at} if enqueued_at else {}
    batch = parse_delivery(inline_message(valid_batch(3).traces, **changes), None, LIMITS)

    assert stored_as_redriven(batch) == batch


def test_a_failed_payload_of_a_claim_check_reads_back_under_the_hash_its_ticket_named() -> None:
    valid = valid_batch(5)
    message = claim_check(valid)
    batch = parse_delivery(message, valid.body, LIMITS)

    payload = failed_payload(batch)
    redriven = stored_as_redriven(batch)

    assert valid.body.decode() in payload  # spliced in as it came, not encoded again
    assert set(json.loads(payload)) == {"batch_id", "source", "traces"}  # the v1 shape: no custody fields
    assert redriven.valid.content_hash == message["content_hash"]  # so the re-drive revives the parked row
    assert (redriven.batch_id, redriven.valid.traces) == (batch.batch_id, as_plain(batch.valid.traces))
