"""The UUID form of trace ids (`models.trace_ids`): exact bytes, reversible, and never mistaken for another UUID."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from models.trace_ids import MAX_TRACE_ID, trace_row_id, trace_uuid


class BackendId(BaseModel):
    """How the tunix-rt backend's schemas type a trace id."""

    id: uuid.UUID


def test_row_id_42_has_the_documented_uuid_form() -> None:
    form = trace_uuid(42)

    assert str(form) == "74756e69-7872-8000-8000-00000000002a"
    assert form.bytes == b"tunixr\x80\x00" + ((1 << 63) | 42).to_bytes(8, "big")
    assert (form.version, form.variant) == (8, uuid.RFC_4122)


@pytest.mark.parametrize("row_id", [0, 1, 42, 2**31, 2**60 - 1, 2**60, MAX_TRACE_ID])
def test_every_row_id_round_trips_through_its_uuid_form_and_the_backends_schema(row_id: int) -> None:
    parsed = BackendId.model_validate_json(BackendId(id=trace_uuid(row_id)).model_dump_json()).id

    assert trace_row_id(parsed) == row_id
    assert trace_row_id(uuid.UUID(str(parsed).upper())) == row_id


@pytest.mark.parametrize(
    "foreign",
    [
        uuid.UUID(int=0),
        uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff"),
        uuid.uuid4(),
        uuid.UUID("74756e69-7872-8001-8000-00000000002a"),  # another prefix
        uuid.UUID("74756e69-7872-8000-c000-00000000002a"),  # another variant
        uuid.UUID("74756e69-7872-8000-0000-00000000002a"),
    ],
)
def test_a_uuid_that_is_not_a_trace_uuid_names_no_row(foreign: uuid.UUID) -> None:
    assert trace_row_id(foreign) is None


@pytest.mark.parametrize("row_id", [-1, MAX_TRACE_ID + 1, 2**63 - 1])
def test_a_row_id_outside_the_62_bit_range_has_no_uuid_form(row_id: int) -> None:
    with pytest.raises(ValueError, match="has no UUID form"):
        trace_uuid(row_id)
