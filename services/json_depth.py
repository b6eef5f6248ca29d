"""Where JSON too deep to decode breaks the nesting rule (PRODUCT.md §3), found without decoding it: the
parser gives up at about 900 levels with no word of where, and a refusal must still name the trace and field."""

from __future__ import annotations

import re

from models.schemas import META_MAX_DEPTH

#: A string (with the colon after it when it is a key), a bracket, or a comma: all a depth scan needs.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*:?|[\[\]{},]')


def too_deep_field(raw: bytes, *, in_array: bool) -> tuple[int, str] | None:
    """(trace index, top-level field) where `raw` nests deeper than any valid trace can, or None. `raw` is a
    JSON array of traces (`in_array`) or one trace (a JSON Lines line, index 0). Linear, never recursive."""
    trace_depth = 2 if in_array else 1
    limit = META_MAX_DEPTH + trace_depth  # `meta`, one level below its trace, is the deepest valid value
    depth = index = 0
    field = "trace"
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return index, field
        elif token in (b"]", b"}"):
            depth -= 1
        elif token == b",":
            index += depth == 1 and in_array
        elif depth == trace_depth and token.endswith(b":"):
            field = token[1 : token.rindex(b'"')].decode("utf-8", "replace")
    return None


def nesting_problem(field: str) -> str:
    """The reason given for a field nested too deeply, as the trace rules word it."""
    if field == "meta":
        return f"nesting is deeper than {META_MAX_DEPTH} levels"
    return f"is nested too deeply (only meta nests, up to {META_MAX_DEPTH} levels; a step's values are scalars)"
