"""What a parked batch's row keeps of a message that was not stored, hostile ones included: raw payload text,
batch id, trace count, content hash. Pure functions, no server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from models.schemas import OversizeInteger
from services.delivery.parked_rows import (
    RAW_PAYLOAD_CAP,
    RAW_PAYLOAD_MAX_DEPTH,
    batch_id_of,
    declared_count,
    errors_json,
    payload_hash,
    raw_payload_text,
    rejected_payload,
    unread_content_hash,
    unread_payload,
    unreadable_text,
)
from services.delivery.parsing import parse_delivery
from services.errors import TraceError
from tests.unit.messages import LIMITS, claim_check, inline_message, valid_batch


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    return 1 + max((depth_of(item) for item in value), default=0) if isinstance(value, list) else 0


def test_a_raw_payload_nested_thousands_deep_is_written_cut_at_the_depth_limit() -> None:
    text = raw_payload_text({"batch_id": "x", "traces": nested(5000, "leaf")})

    kept = json.loads(text)["traces"]
    assert depth_of(kept) == RAW_PAYLOAD_MAX_DEPTH - 1  # the message itself is the first level
    assert f"<nested deeper than {RAW_PAYLOAD_MAX_DEPTH} levels>" in text and "leaf" not in text


def test_a_raw_payload_escapes_nul_non_ascii_and_lone_surrogates_and_reads_back_unchanged() -> None:
    message = {"source": "caf\u00e9 \u6f22\u5b57 \U0001f600", "traces": ["a\x00b", "lone \ud800"]}

    text = raw_payload_text(message)

    assert text.isascii() and "\x00" not in text
    assert json.loads(text) == message


def test_a_raw_payload_keeps_big_integers_exactly_and_names_oversize_ones() -> None:
    big = 2**64 + 1

    text = raw_payload_text({"n": big, "m": -(10**4000), "huge": OversizeInteger("7" * 5000)})

    assert json.loads(text) == {"n": big, "m": -(10**4000), "huge": "<an integer of 5000 digits>"}


def test_a_raw_payload_writes_what_json_cannot_hold_as_its_repr() -> None:
    assert json.loads(raw_payload_text({"b": b"\x00\xff", 3: {1, 2}})) == {"b": "b'\\x00\\xff'", "3": "{1, 2}"}


def test_a_message_keeps_the_batch_id_it_declares() -> None:
    message = inline_message([])

    assert batch_id_of(message, raw_payload_text(message)) == uuid.UUID(message["batch_id"])


@pytest.mark.parametrize(
    "message",
    [{"batch_id": "nope", "traces": []}, {"traces": [1]}, ["a", "list"], "text", None],
    ids=["unusable id", "no id", "a list", "a string", "null"],
)
def test_a_message_without_a_usable_batch_id_gets_a_stable_id_from_its_content(message: Any) -> None:
    derived = batch_id_of(message, raw_payload_text(message))
    redelivered = json.loads(json.dumps(message))

    assert derived == batch_id_of(redelivered, raw_payload_text(redelivered))
    assert derived.version == 5
    assert derived != batch_id_of({"other": message}, raw_payload_text({"other": message}))


def test_the_derived_batch_id_does_not_depend_on_key_order() -> None:
    first, reordered = {"source": "s", "traces": [1]}, {"traces": [1], "source": "s"}

    assert batch_id_of(first, raw_payload_text(first)) == batch_id_of(reordered, raw_payload_text(reordered))


@pytest.mark.parametrize(
    ("message", "count"),
    [
        ({"traces": [1, 2, 3]}, 3),
        ({"trace_count": 40}, 40),
        ({"trace_count": -1}, 0),
        ({"trace_count": 2**31}, 0),
        ({"trace_count": "5"}, 0),
        ({"traces": "many", "trace_count": 2}, 2),
        (["not", "a", "mapping"], 0),
    ],
)
def test_the_declared_count_is_what_the_message_says_when_it_fits_a_column(message: Any, count: int) -> None:
    assert declared_count(message) == count


def test_an_unread_claim_check_is_kept_in_the_v1_shape_with_its_body_as_it_came() -> None:
    valid = valid_batch(3)
    message = claim_check(valid, enqueued_at="2026-11-27T10:00:00+00:00")

    payload = unread_payload(message, valid.body)

    assert payload.endswith('"traces": ' + valid.body.decode() + "}")
    kept = json.loads(payload)
    assert set(kept) == {"batch_id", "source", "enqueued_at", "traces"}
    assert parse_delivery(kept, None, LIMITS).valid.content_hash == message["content_hash"]  # re-drivable


def test_an_unread_claim_check_is_kept_under_the_hash_its_ticket_names() -> None:
    valid = valid_batch(2)
    message = claim_check(valid)

    assert unread_content_hash(message, unread_payload(message, valid.body)) == valid.content_hash


def test_an_unread_inline_message_is_kept_under_the_hash_validation_would_give_it() -> None:
    valid = valid_batch(4)
    message = inline_message(valid.traces)

    payload = unread_payload(message, None)

    assert json.loads(payload) == message
    assert unread_content_hash(message, payload) == valid.content_hash


@pytest.mark.parametrize(
    "message",
    [{"content_hash": "not-a-sha256"}, {"traces": [OversizeInteger("9" * 30)]}, ["a", "list"]],
    ids=["a malformed hash", "traces JSON cannot hold", "not a mapping"],
)
def test_an_unread_message_with_no_usable_hash_is_kept_under_its_payloads_hash(message: Any) -> None:
    payload = unread_payload(message, None)

    assert unread_content_hash(message, payload) == payload_hash(payload)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'[{"a": "\xff"}]', "is not valid UTF-8 (byte 8)"),
        (b'["a\x00b"]', "holds a NUL byte, which JSON text cannot"),
        ('["caf\u00e9"]'.encode(), None),
    ],
    ids=["not UTF-8", "a raw NUL", "valid UTF-8"],
)
def test_a_body_no_json_can_be_is_named_before_it_is_kept(body: bytes, problem: str | None) -> None:
    assert unreadable_text(body) == problem


def test_a_rejected_payload_shows_its_body_as_text_and_is_capped() -> None:
    message = claim_check(valid_batch(1))

    shown = json.loads(rejected_payload(message, b'["\xff"]'))
    capped = rejected_payload(message, b"x" * (2 * RAW_PAYLOAD_CAP))

    assert shown == {**message, "body": '["\ufffd"]'}
    assert len(capped) == RAW_PAYLOAD_CAP


def test_stored_errors_escape_what_postgresql_cannot_store() -> None:
    errors = [TraceError(2, "meta.k\x00", "lone \ud800 here"), TraceError(None, "batch", "plain")]

    assert errors_json(errors) == [
        {"trace_index": 2, "field_path": "meta.k\\x00", "message": "lone \\ud800 here"},
        {"trace_index": None, "field_path": "batch", "message": "plain"},
    ]
