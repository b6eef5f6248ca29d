"""The trace schemas of PRODUCT.md §3: every rule a trace and its steps obey. Strict: a wrong type is an error,
never coerced. The task and event messages are in `models.messages`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict

#: Serialized size cap of a trace's `meta` (PRODUCT.md §3).
META_MAX_BYTES = 64 * 1024
#: Deepest nesting of `meta`: the top-level object is depth 1.
META_MAX_DEPTH = 32


def storable_text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store `text`, or None when it can."""
    if "\x00" in text:
        return "contains a NUL character, which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid UTF-8"
    return None


def _storable(text: str) -> str:
    if problem := storable_text_problem(text):
        raise ValueError(problem)
    return text


_TOO_DEEP = f"nesting is deeper than {META_MAX_DEPTH} levels"


def _scalar_problem(value: Any, check_text: bool) -> tuple[str, str] | None:
    """The problem of a JSON scalar, None when it has none, or `_NOT_SCALAR`."""
    kind = type(value)
    if kind is str:
        problem = storable_text_problem(value) if check_text else None
        return ("", problem) if problem else None
    if kind is bool or value is None:
        return None
    if kind is int:
        return None if -(2**63) <= value < 2**63 else ("", "is an integer outside the 64-bit range")
    if kind is float:
        return None if math.isfinite(value) else ("", f"is {value}, which JSON cannot represent")
    return _NOT_SCALAR


_NOT_SCALAR = ("", "")


def _meta_problem(value: Any, depth: int, check_text: bool) -> tuple[str, str] | None:
    """(where below `value`, what) of the first problem, or None. Paths are built only when something is wrong.
    Depth counts containers: the top-level object is depth 1, and a scalar adds none. Exact JSON scalars take
    the fast path (most meta is a flat object of them); subclasses the general one."""
    if depth > META_MAX_DEPTH:
        return "", _TOO_DEEP
    if (found := _scalar_problem(value, check_text)) is not _NOT_SCALAR:
        return found
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return "", f"has a non-string key {key!r}"
            if check_text and (problem := storable_text_problem(key)):
                return "", f"has a key {key!r} that {problem}"
            if (found := _scalar_problem(item, check_text)) is _NOT_SCALAR:
                found = _meta_problem(item, depth + 1, check_text)
            if found:
                return f".{key}{found[0]}", found[1]
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _scalar_problem(item, check_text)) is _NOT_SCALAR:
                found = _meta_problem(item, depth + 1, check_text)
            if found:
                return f"[{index}]{found[0]}", found[1]
        return None
    for base in (str, int, float):  # subclasses of the JSON scalars (an exact bool never gets here)
        if isinstance(value, base):
            return _scalar_problem(base(value), check_text)
    return "", f"holds a {type(value).__name__}, which is not a JSON value"


def _check_meta(meta: dict[str, Any] | None, check_text: bool) -> dict[str, Any] | None:
    if meta is None:
        return None
    if found := _meta_problem(meta, 1, check_text):
        where, what = found
        raise ValueError(f"{what} at meta{where}" if what == _TOO_DEEP else f"meta{where} {what}")
    size = len(orjson.dumps(meta))
    if size > META_MAX_BYTES:
        raise ValueError(f"serialized size {size} bytes exceeds maximum of {META_MAX_BYTES}")
    return meta


def _valid_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    return _check_meta(meta, check_text=True)


def _valid_meta_shape(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """`_valid_meta` minus the text checks, which the batch-wide storability check already covers."""
    return _check_meta(meta, check_text=False)


def unique_step_indices(steps: list[Any]) -> list[Any]:
    """Step indices `i` must be unique within a trace (steps are models or plain dicts)."""
    indices = [step["i"] if isinstance(step, dict) else step.i for step in steps]
    if len(set(indices)) == len(indices):
        return steps
    seen: set[int] = set()
    for position, index in enumerate(indices):
        if index in seen:
            raise ValueError(f"duplicate step index i={index} at steps[{position}]")
        seen.add(index)
    raise AssertionError("unreachable: a duplicate was counted")


#: Non-empty strings of at most N characters. The `Storable` kinds also reject what PostgreSQL cannot store.
Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Long = Annotated[str, StringConstraints(min_length=1, max_length=50_000)]
StepText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
StorableShort = Annotated[Short, AfterValidator(_storable)]
StorableLong = Annotated[Long, AfterValidator(_storable)]
StorableStepText = Annotated[StepText, AfterValidator(_storable)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)]
StepIndex = Annotated[int, Field(ge=0, le=2**31 - 1)]
Meta = Annotated[dict[str, Any] | None, AfterValidator(_valid_meta)]
MetaShape = Annotated[dict[str, Any] | None, AfterValidator(_valid_meta_shape)]


class StepIn(BaseModel):
    """One reasoning step."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    i: StepIndex
    type: StorableShort
    content: StorableStepText


class TraceIn(BaseModel):
    """A reasoning trace as producers send it (the seed project's `ReasoningTrace`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    trace_version: StorableShort
    prompt: StorableLong
    final_answer: StorableLong
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=1000), AfterValidator(unique_step_indices)]
    meta: Meta = None


class StepFields(TypedDict):
    """`StepIn`'s rules on a plain dict, minus storability (checked for a whole batch at once)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    i: StepIndex
    type: Short
    content: StepText


class TraceFields(TypedDict):
    """`TraceIn`'s rules on a plain dict, minus storability: validates without building models (4x faster)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    trace_version: Short
    prompt: Long
    final_answer: Long
    steps: Annotated[list[StepFields], Field(min_length=1, max_length=1000), AfterValidator(unique_step_indices)]
    meta: NotRequired[MetaShape]
