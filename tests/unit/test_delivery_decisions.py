"""What one delivery does (`decide`), branch by branch, without a session or a server."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from models.compiled_schema import as_plain
from services.delivery.decision import ParkUnread, Reject, SettleMissingBody, Store, decide
from services.errors import TraceError
from tests.unit.messages import LIMITS, claim_check, inline_message, valid_batch
from worker.localstack.sample_traces import generate_traces


def test_a_v1_message_with_valid_traces_is_stored_as_the_batch_it_names() -> None:
    traces = list(generate_traces(3))
    message = inline_message(traces, enqueued_at="2026-11-27T10:00:00+00:00")

    decision = decide(message, None, LIMITS, attempts=1)

    assert isinstance(decision, Store)
    batch = decision.batch
    assert (str(batch.batch_id), batch.source) == (message["batch_id"], "unit")
    assert batch.enqueued_at == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert batch.valid == valid_batch(3)  # the traces, their hash and body, as the producer computes them


def test_a_claim_check_with_its_body_is_stored_with_that_body() -> None:
    valid = valid_batch(4)
    message = claim_check(valid)

    decision = decide(message, valid.body, LIMITS, attempts=2)

    assert isinstance(decision, Store)
    assert decision.batch.batch_id == uuid.UUID(message["batch_id"])
    assert decision.batch.valid.body is valid.body
    assert decision.batch.valid.content_hash == message["content_hash"]
    assert as_plain(decision.batch.valid.traces) == valid.traces


def test_a_claim_check_whose_body_is_gone_is_settled_with_its_ticket() -> None:
    message = claim_check(valid_batch(2))

    decision = decide(message, None, LIMITS, attempts=1)

    assert isinstance(decision, SettleMissingBody)
    assert (str(decision.ticket.batch_id), decision.ticket.trace_count) == (message["batch_id"], 2)
    assert decision.ticket.content_hash == message["content_hash"]


def test_a_missing_body_is_settled_even_past_the_delivery_budget() -> None:
    decision = decide(claim_check(valid_batch(2)), None, LIMITS, attempts=LIMITS.max_deliveries + 10)

    assert isinstance(decision, SettleMissingBody)


def test_a_claim_check_without_a_body_and_with_a_broken_ticket_is_rejected_naming_the_field() -> None:
    decision = decide(claim_check(valid_batch(2), content_hash="not-a-hash"), None, LIMITS, attempts=1)

    assert isinstance(decision, Reject)
    assert [(error.trace_index, error.field_path) for error in decision.errors] == [(None, "content_hash")]


@pytest.mark.parametrize(
    "named",
    [{"trace_count": 3}, {"content_hash": "0" * 64}],
    ids=["another trace count", "another content hash"],
)
def test_a_body_other_than_the_one_its_ticket_names_is_rejected(named: dict[str, object]) -> None:
    valid = valid_batch(2)

    decision = decide(claim_check(valid, **named), valid.body, LIMITS, attempts=1)

    assert decision == Reject([TraceError(None, "body", "holds 2 traces that are not the batch its message names")])


def test_a_delivery_past_its_budget_is_parked_unread_even_if_it_is_invalid() -> None:
    message = inline_message(["not a trace"])  # would be rejected if it were read
    attempts = LIMITS.max_deliveries + 1

    decision = decide(message, None, LIMITS, attempts)

    assert decision == ParkUnread(uuid.UUID(message["batch_id"]), "delivered 6 times without being stored")


def test_the_last_delivery_within_the_budget_is_still_read() -> None:
    decision = decide(inline_message(list(generate_traces(1))), None, LIMITS, attempts=LIMITS.max_deliveries)

    assert isinstance(decision, Store)


def test_a_message_past_its_budget_without_a_usable_batch_id_is_parked_under_no_declared_id() -> None:
    decision = decide({"batch_id": "nope", "traces": []}, None, LIMITS, attempts=99)

    assert decision == ParkUnread(None, "delivered 99 times without being stored")


def test_an_invalid_envelope_is_rejected_naming_every_field() -> None:
    message = {"batch_id": "nope", "source": "", "traces": list(generate_traces(1)), "extra": 1}

    decision = decide(message, None, LIMITS, attempts=1)

    assert isinstance(decision, Reject)
    assert {error.field_path: error.trace_index for error in decision.errors} == {
        "batch_id": None,
        "source": None,
        "extra": None,
    }
    assert decision.errors[-1].message == "Extra inputs are not permitted"


def test_a_message_that_is_not_a_mapping_is_rejected() -> None:
    decision = decide(["a", "list"], None, LIMITS, attempts=1)

    assert isinstance(decision, Reject)
    assert decision.errors[0].field_path == "trace" and "valid dictionary" in decision.errors[0].message


def broken_traces() -> list[dict[str, Any]]:
    traces = list(generate_traces(3))
    del traces[1]["prompt"]
    traces[2]["steps"][0]["i"] = "zero"
    return traces


def test_invalid_inline_traces_are_rejected_naming_each_trace_index_and_field() -> None:
    decision = decide(inline_message(broken_traces()), None, LIMITS, attempts=1)

    assert decision == Reject(
        [
            TraceError(1, "prompt", "Field required"),
            TraceError(2, "steps[0].i", "Input should be a valid integer"),
        ]
    )


def test_an_invalid_body_is_rejected_naming_each_trace_index_and_field() -> None:
    body = orjson.dumps(broken_traces(), option=orjson.OPT_SORT_KEYS)
    message = claim_check(valid_batch(3), content_hash=hashlib.sha256(body).hexdigest())

    decision = decide(message, body, LIMITS, attempts=1)

    assert isinstance(decision, Reject)
    assert [(error.trace_index, error.field_path) for error in decision.errors] == [(1, "prompt"), (2, "steps[0].i")]


def test_a_batch_over_the_size_limits_is_rejected_saying_which_limit() -> None:
    valid = valid_batch(3)
    small = LIMITS._replace(max_batch=2)

    inline = decide(inline_message(valid.traces), None, small, attempts=1)
    ticketed = decide(claim_check(valid), valid.body, LIMITS._replace(max_bytes=100), attempts=1)

    assert inline == Reject([TraceError(None, "traces", "3 traces exceeds maximum of 2 per batch")])
    assert isinstance(ticketed, Reject) and "exceeds maximum of 100 per batch" in ticketed.errors[0].message
