"""Reading traces from JSONL, with a clear reason and line number for every line that is not a JSON object."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson


class JsonlLine(NamedTuple):
    """One non-blank line: its number (from 1), the decoded object, or why it could not be decoded."""

    number: int
    value: dict[str, Any] | None
    problem: str | None


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The standard parser also takes escaped lone surrogates, so validation can name the field that has one.
        return json.loads(raw)


def read_jsonl(lines: Iterable[bytes]) -> Iterator[JsonlLine]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield JsonlLine(number, None, f"not valid UTF-8 (byte {error.start})")
            continue
        try:
            value = _loads(raw)
        except json.JSONDecodeError as error:
            yield JsonlLine(number, None, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(value, dict):
            yield JsonlLine(number, None, f"a trace must be a JSON object, not {type(value).__name__}")
            continue
        yield JsonlLine(number, value, None)
