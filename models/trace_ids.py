"""The UUID form of trace ids. A `trace` row's id is a bigint; the tunix-rt backend's clients validate trace ids
as UUIDs. So every trace id the HTTP API hands out is this reversible form of the bigint, and nothing new is
stored. Its 16 bytes:

    bytes 0-5   74 75 6e 69 78 72   "tunixr" in ASCII: the mark of this store
    bytes 6-7   80 00               version 8 (RFC 9562: custom layout), then zero
    bytes 8-15  the row id as a big-endian 64-bit integer whose top two bits are set to 10 (the RFC variant)

Row id 42 is `74756e69-7872-8000-8000-00000000002a`: the first 16 hex digits never change, and the last 15 are
the row id in hex (up to 2**60). Row ids up to 2**62 - 1 have a UUID form; PostgreSQL's sequence would take
about 146 years at a billion rows a second to pass that.
"""

from __future__ import annotations

from uuid import UUID

#: The UUID form's first 8 bytes: "tunixr", then the version nibble 8 and zeros.
TRACE_ID_PREFIX = 0x74756E69_78728000
#: The RFC 9562 variant (binary 10) in the top two bits of the last 8 bytes.
_VARIANT = 0b10 << 62
#: The largest row id with a UUID form: the 62 bits left below the variant.
MAX_TRACE_ID = (1 << 62) - 1


def trace_uuid(row_id: int) -> UUID:
    """The UUID form of a `trace` row id. Raises ValueError for an id outside 0..MAX_TRACE_ID."""
    if not 0 <= row_id <= MAX_TRACE_ID:
        raise ValueError(f"trace id {row_id} has no UUID form (0..{MAX_TRACE_ID})")
    return UUID(int=(TRACE_ID_PREFIX << 64) | _VARIANT | row_id)


def trace_row_id(value: UUID) -> int | None:
    """The `trace` row id a UUID form names; None for any other UUID (it never names a trace of this store)."""
    high, low = value.int >> 64, value.int & ((1 << 64) - 1)
    if high != TRACE_ID_PREFIX or low & ~MAX_TRACE_ID != _VARIANT:
        return None
    return low & MAX_TRACE_ID
