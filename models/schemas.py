"""The trace schemas of PRODUCT.md §3: every rule a trace and its steps obey. Strict: a wrong type is an error,
never coerced. The task and event messages are in `models.messages`."""

from __future__ import annotations

import math
import operator
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict

#: Serialized size cap of a trace's `meta` (PRODUCT.md §3).
META_MAX_BYTES = 64 * 1024
#: Deepest nesting of `meta`: the top-level object is depth 1. A step's values are scalars (no nesting at all).
META_MAX_DEPTH = 32
#: Floats from this magnitude on are whole numbers that PostgreSQL's jsonb reads back as integers (1e300 comes
#: back as 10**300, which is not the float sent): refused, so every stored trace reads back as it was sent.
FLOAT_MAX_MAGNITUDE = 1e16
#: The longest integer literal read from JSON: "-9223372036854775808" is 20 characters. A longer one is outside
#: the 64-bit range whatever its digits, and is never converted (Python refuses over 4,300 digits, and slowly).
INT_MAX_CHARS = 20


class OversizeInteger:
    """Stands for an integer literal longer than INT_MAX_CHARS in decoded JSON, so that validation names its
    field instead of the parser failing on the whole body."""

    __slots__ = ("digits",)

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def parse_bounded_int(literal: str) -> int | OversizeInteger:
    """`json.loads(..., parse_int=parse_bounded_int)`: integers as usual, an OversizeInteger past 20 characters."""
    return int(literal) if len(literal) <= INT_MAX_CHARS else OversizeInteger(literal)


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


def _scalar_problem(value: Any) -> tuple[str, str] | None:
    """The problem of a JSON scalar, None when it has none, or `_NOT_SCALAR`. Text is checked for storability
    with the rest of the batch (`unstorable_text`)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return None
    if kind is int:
        return None if -(2**63) <= value < 2**63 else ("", "is an integer outside the 64-bit range")
    if kind is float:
        if not math.isfinite(value):
            return "", f"is {value}, which JSON cannot represent"
        return None if abs(value) < FLOAT_MAX_MAGNITUDE else ("", _FLOAT_TOO_LARGE)
    if kind is OversizeInteger:
        return "", f"is an integer of {value.digits} digits, outside the 64-bit range"
    return _NOT_SCALAR


_NOT_SCALAR = ("", "")
_FLOAT_TOO_LARGE = (
    "is a float of magnitude 1e16 or more, which PostgreSQL reads back as an integer: send it as a string "
    "or as a 64-bit integer"
)


def _meta_problem(value: Any, depth: int) -> tuple[str, str] | None:
    """(where below `value`, what) of the first problem, or None. Paths are built only when something is wrong.
    Depth counts containers: the top-level object is depth 1, and a scalar adds none. Exact JSON scalars take
    the fast path (most meta is a flat object of them); subclasses the general one."""
    if depth > META_MAX_DEPTH:
        return "", _TOO_DEEP
    if (found := _scalar_problem(value)) is not _NOT_SCALAR:
        return found
    if isinstance(value, dict):  # a JSON object; another Mapping is named below
        for key, item in value.items():
            if not isinstance(key, str):
                return "", f"has a non-string key {key!r}"
            if (found := _scalar_problem(item)) is _NOT_SCALAR:
                found = _meta_problem(item, depth + 1)
            if found:
                return f".{key}{found[0]}", found[1]
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _scalar_problem(item)) is _NOT_SCALAR:
                found = _meta_problem(item, depth + 1)
            if found:
                return f"[{index}]{found[0]}", found[1]
        return None
    for base in (str, int, float):  # subclasses of the JSON scalars (an exact bool never gets here)
        if isinstance(value, base):
            return _scalar_problem(base(value))
    kind = type(value)
    named = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    return "", f"holds a {named}, which is not a JSON value"


def _flat_and_fine(meta: dict[str, Any]) -> bool:
    """Whether `meta` is an object of exact JSON scalars that `_meta_problem` would pass (most meta is): decided
    without a call per value, since every producer and worker runs it on every trace. False sends it to
    `_meta_problem`, which names what is wrong, if anything."""
    for key, item in meta.items():
        kind = type(item)
        if type(key) is not str:
            return False
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -(2**63) <= item < 2**63:
                return False
        elif kind is not float or not -FLOAT_MAX_MAGNITUDE < item < FLOAT_MAX_MAGNITUDE:  # NaN fails this too
            return False
    return True


def json_default(value: object) -> object:
    """orjson's `default`: a float subclass (numpy's float64 is one) encoded as the float it is; orjson encodes
    the other JSON scalars' subclasses itself. Anything else stays unencodable (`TypeError`)."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _valid_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    if found := None if type(meta) is dict and _flat_and_fine(meta) else _meta_problem(meta, 1):
        where, what = found
        raise ValueError(f"{what} at meta{where}" if what == _TOO_DEEP else f"meta{where} {what}")
    try:
        size = len(orjson.dumps(meta, default=json_default))
    except orjson.JSONEncodeError:  # a lone surrogate: the storability check names where (`unstorable_text`)
        return meta
    if size > META_MAX_BYTES:
        raise ValueError(f"serialized size {size} bytes exceeds maximum of {META_MAX_BYTES}")
    return meta


#: A step's index: from a dict (pydantic validates dicts), or from the compiled struct (models.compiled_schema), whose
#: attribute costs a third of its dict-like subscript.
_INDEX_OF_DICT, _INDEX_OF_STRUCT = operator.itemgetter("i"), operator.attrgetter("i")


def unique_step_indices(steps: list[Any]) -> list[Any]:
    """Step indices `i` must be unique within a trace. Runs on every trace a producer or worker validates."""
    index_of = _INDEX_OF_DICT if not steps or type(steps[0]) is dict else _INDEX_OF_STRUCT
    if len(set(map(index_of, steps))) == len(steps):
        return steps
    indices = list(map(index_of, steps))
    seen: set[int] = set()
    for position, index in enumerate(indices):
        if index in seen:
            raise ValueError(f"duplicate step index i={index} at steps[{position}]")
        seen.add(index)
    raise AssertionError("unreachable: a duplicate was counted")


#: Non-empty strings of at most N characters. Whether PostgreSQL can store them (no NUL, no lone surrogate) is
#: checked for a whole batch at once: `unstorable_text`, when the batch's JSON shows such a character.
Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Long = Annotated[str, StringConstraints(min_length=1, max_length=50_000)]
StepText = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)]
StepIndex = Annotated[int, Field(ge=0, le=2**31 - 1)]
Meta = Annotated[dict[str, Any] | None, AfterValidator(_valid_meta)]


class StepIn(TypedDict):
    """One reasoning step."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    i: StepIndex
    type: Short
    content: StepText


class TraceIn(TypedDict):
    """A reasoning trace as producers send it (the tunix-rt backend's `ReasoningTrace`): every rule of PRODUCT.md §3
    but storability, defined once. Validated as plain dicts, without building models."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    trace_version: Short
    prompt: Long
    final_answer: Long
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=1000), AfterValidator(unique_step_indices)]
    meta: NotRequired[Meta]


def _unstorable_in(value: Any, path: str, depth: int = 1) -> tuple[str, str] | None:
    """(where, what) of the first string or key below `value` that PostgreSQL cannot store, or None. Reads no
    deeper than META_MAX_DEPTH + 1 levels: a value nested deeper is refused by the nesting rule anyway, and
    however deep a hostile value is, this never exhausts the stack."""
    if depth > META_MAX_DEPTH + 1:
        return None
    if isinstance(value, str):
        problem = storable_text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := storable_text_problem(key)):
                return path, f"has a key {key!r} that {problem}"
            if found := _unstorable_in(item, f"{path}.{key}", depth + 1):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := _unstorable_in(item, f"{path}[{index}]", depth + 1):
                return found
    return None


_TEXT_FIELDS = ("trace_version", "prompt", "final_answer")


def unstorable_text(traces: list[Any]) -> list[tuple[int, str, str]]:
    """(trace index, field path, reason) of every text field PostgreSQL cannot store: the storability rule of
    §3, for a batch whose JSON holds a NUL or a lone surrogate somewhere."""
    found: list[tuple[int, str, str]] = []
    for index, trace in enumerate(traces):
        if not isinstance(trace, dict):
            continue
        fields = [(name, trace.get(name)) for name in _TEXT_FIELDS]
        steps = trace.get("steps")
        for position, step in enumerate(steps if isinstance(steps, list) else []):
            if isinstance(step, dict):
                fields += [(f"steps[{position}].{name}", step.get(name)) for name in ("type", "content")]
        for path, value in fields:
            if isinstance(value, str) and (problem := storable_text_problem(value)):
                found.append((index, path, problem))
        if (meta := _unstorable_in(trace.get("meta"), "meta")) is not None:
            found.append((index, "meta", f"{meta[0]} {meta[1]}"))
    return found
