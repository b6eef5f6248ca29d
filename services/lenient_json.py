"""JSON read leniently, so that validation can name what the fast parser only refuses: escaped lone surrogates,
infinities, integers past 64 bits, nesting deeper than any parser goes."""

from __future__ import annotations

import json
from typing import Any

from models.schemas import parse_bounded_int
from services.errors import BatchRejected, TraceError
from services.json_depth import nesting_problem, too_deep_field


def loads_lenient(raw: bytes | str) -> Any:
    """JSON decoded by the standard parser, which also takes escaped lone surrogates and infinities (so that
    validation can name the field that holds one); an integer too long for 64 bits comes as an
    `OversizeInteger` for the same reason. Raises `json.JSONDecodeError`, `UnicodeDecodeError`, or
    `RecursionError` for JSON nested deeper than the parser goes (about 900 levels)."""
    return json.loads(raw, parse_int=parse_bounded_int)


def decode_leniently(body: bytes) -> Any:
    """The body decoded by `loads_lenient`; raises `BatchRejected` when it is not JSON at all."""
    try:
        return loads_lenient(body)
    except UnicodeDecodeError as error:
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid UTF-8 (byte {error.start})")]) from None
    except json.JSONDecodeError as error:
        raise BatchRejected([TraceError(None, "traces", f"the body is not valid JSON: {error}")]) from None
    except RecursionError:
        raise nesting_rejection(body, TraceError(None, "traces", "the body's JSON is nested too deeply")) from None


def nesting_rejection(body: bytes, fallback: TraceError) -> BatchRejected:
    """The refusal of a body nested too deeply to decode: naming the trace and field where it is, or
    `fallback` when no field holds it (the array itself is what nests)."""
    found = too_deep_field(body, in_array=True)
    if found is None or found[1] == "trace":
        return BatchRejected([fallback])
    index, field = found
    return BatchRejected([TraceError(index, field, nesting_problem(field))])
