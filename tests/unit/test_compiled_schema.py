"""The compiled decoder is `TraceIn`, translated: it accepts exactly the bodies pydantic accepts, reads them as the
same values, and the stored columns derived from either are the same bytes."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import math
import random
import struct
import types
import uuid
from typing import Annotated, Any

import msgspec
import numpy
import orjson
import pytest
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from models import compiled_schema
from models.compiled_schema import TraceStruct, as_plain, convert_valid_batch, decode_valid_batch
from models.derived import derive, stored_row
from models.schemas import META_MAX_DEPTH, StepIn, TraceIn
from models.trace_rows import copy_chunks
from services.batch_body import encode_body, encode_compiled_body, holds_nul
from services.validation import validate_json_array, validate_traces
from tests.conftest import SAMPLE_DATA

PYDANTIC = TypeAdapter(list[TraceIn])


def sample_traces() -> list[dict[str, Any]]:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def base_trace() -> dict[str, Any]:
    return {
        "trace_version": "1.0",
        "prompt": "What is 2 + 2?",
        "final_answer": "4",
        "steps": [{"i": 0, "type": "reasoning", "content": "2 + 2 = 4"}, {"i": 1, "type": "check", "content": "ok"}],
        "meta": {"source": "unit", "n": 3},
    }


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


#: Values that break, or just keep, a rule: each is tried in every field below.
PROBES: list[Any] = [
    None, True, 0, -1, 1.0, 1.5, "", "x", "x" * 64, "x" * 65, [], [1], {}, {"a": 1}, 2**31 - 1, 2**31, 2**63, 1e16,
]  # fmt: skip


def variants() -> list[tuple[str, Any]]:
    """(what was changed, the batch) for every field set to every probe, removed, or joined by an extra key;
    plus the lengths, bounds, uniqueness and nesting at and past their limits."""
    cases: list[tuple[str, Any]] = []
    for field in ("trace_version", "prompt", "final_answer", "steps", "meta"):
        for probe in PROBES:
            cases.append((f"{field}={probe!r:.20}", [{**base_trace(), field: probe}]))
        cases.append((f"no {field}", [{k: v for k, v in base_trace().items() if k != field}]))
    for field in ("i", "type", "content"):
        for probe in PROBES:
            trace = base_trace()
            trace["steps"][0][field] = probe
            cases.append((f"steps[0].{field}={probe!r:.20}", [trace]))
        trace = base_trace()
        del trace["steps"][0][field]
        cases.append((f"no steps[0].{field}", [trace]))
    lengths = {"prompt": 50_000, "final_answer": 50_000, "trace_version": 64}
    for field, limit in lengths.items():
        cases += [(f"{field} of {n}", [{**base_trace(), field: "y" * n}]) for n in (limit, limit + 1)]
    for n in (20_000, 20_001):
        trace = base_trace()
        trace["steps"][1]["content"] = "z" * n
        cases.append((f"content of {n}", [trace]))
    for count in (1000, 1001):
        steps = [{"i": i, "type": "t", "content": "c"} for i in range(count)]
        cases.append((f"{count} steps", [{**base_trace(), "steps": steps}]))
    duplicate = base_trace()
    duplicate["steps"][1]["i"] = 0
    cases.append(("duplicate step index", [duplicate]))
    cases += [("extra key", [{**base_trace(), "extra": 1}])]
    extra_in_step = base_trace()
    extra_in_step["steps"][0]["extra"] = 1
    cases.append(("extra key in a step", [extra_in_step]))
    cases += [
        (f"meta nested {depth}", [{**base_trace(), "meta": nested(depth)}])
        for depth in (META_MAX_DEPTH, META_MAX_DEPTH + 1)
    ]
    cases += [
        ("meta too large", [{**base_trace(), "meta": {"blob": "b" * 70_000}}]),
        ("meta float 1e16", [{**base_trace(), "meta": {"f": 1e16}}]),
        ("meta float 9.9e15", [{**base_trace(), "meta": {"f": 9.9e15}}]),
        ("meta int 2**63", [{**base_trace(), "meta": {"n": 2**63}}]),
        ("meta int -(2**63)", [{**base_trace(), "meta": {"n": -(2**63)}}]),
        ("meta list", [{**base_trace(), "meta": [1, 2]}]),
        ("trace not an object", [1]),
        ("body not a list", {"traces": []}),
        ("two traces, the second bad", [base_trace(), {**base_trace(), "prompt": ""}]),
    ]
    return cases


def accepted_by_pydantic(body: bytes) -> bool:
    try:
        PYDANTIC.validate_json(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("change", "batch"), variants(), ids=[change for change, _ in variants()])
def test_the_compiled_decoder_accepts_exactly_what_pydantic_accepts(change: str, batch: Any) -> None:
    body = json.dumps(batch).encode()
    decoded = decode_valid_batch(body)
    assert (decoded is not None) == accepted_by_pydantic(body), change
    if decoded is not None:
        assert as_plain(decoded) == PYDANTIC.validate_json(body)


class Text(str):
    pass


class Whole(int):
    pass


class Real(float):
    pass


class Steps(list[Any]):
    pass


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    LOW = 0


class Named(str, enum.Enum):  # noqa: UP042 (a producer may well have one)
    NAME = "name"


@dataclasses.dataclass
class Point:
    x: int = 1


#: Python values a producer may hand over where JSON has one kind: the compiled rules must read each as pydantic's
#: strict mode does (msgspec.convert alone would take a tuple for a list, any Mapping for an object).
PYTHON_PROBES: list[Any] = [
    Text("x"), Whole(1), Real(1.5), numpy.float64(0.5), numpy.int64(1), b"x", bytearray(b"x"), decimal.Decimal("1"),
    datetime.datetime(2026, 12, 4), uuid.UUID(int=1), Colour.RED, Level.LOW, Named.NAME, Point(), (), (1,),
    Steps([1]), {1}, frozenset([1]), collections.OrderedDict(a=1), types.MappingProxyType({"a": 1}), {1: 2},
    {"a": (1,)}, {"a": {1}}, {"a": float("nan")}, {"a": Text("x")}, {"a": Real(2.5)}, {"a": Colour.RED},
    {"a": Named.NAME}, {"a": Level.LOW}, {"a": uuid.UUID(int=2)}, {"a": types.MappingProxyType({"b": 1})},
]  # fmt: skip


def python_variants() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for field in ("trace_version", "prompt", "final_answer", "steps", "meta"):
        cases += [(f"{field}={probe!r:.30}", {**base_trace(), field: probe}) for probe in PROBES + PYTHON_PROBES]
    for field in ("i", "type", "content"):
        for probe in PROBES + PYTHON_PROBES:
            trace = base_trace()
            trace["steps"][0][field] = probe
            cases.append((f"steps[0].{field}={probe!r:.30}", trace))
    steps = base_trace()["steps"]
    for sequence in (tuple, Steps):
        cases.append((f"steps as {sequence.__name__}", {**base_trace(), "steps": sequence(steps)}))
    for mapping in (collections.OrderedDict, types.MappingProxyType):
        cases.append((f"a step as {mapping.__name__}", {**base_trace(), "steps": [mapping(steps[0]), steps[1]]}))
        cases.append((f"the trace as {mapping.__name__}", mapping(base_trace())))
    step_struct = compiled_schema._COMPILED[StepIn]
    cases.append(
        ("the trace as a compiled struct", TraceStruct(**{**base_trace(), "steps": [step_struct(**steps[0])]}))
    )
    cases.append(("a step as a compiled struct", {**base_trace(), "steps": [step_struct(i=-5, type="", content="")]}))
    return cases


@pytest.mark.parametrize(("change", "trace"), python_variants(), ids=[change for change, _ in python_variants()])
def test_from_python_objects_the_compiled_rules_accept_what_pydantic_accepts_and_encode_the_same_body(
    change: str, trace: Any
) -> None:
    try:
        PYDANTIC.validate_python([trace])
        accepted = True
    except ValidationError:
        accepted = False
    compiled = convert_valid_batch([trace])
    assert (compiled is not None) == accepted, change
    if compiled is not None:  # None: what msgspec cannot encode (a str subclass) takes the full path
        assert encode_compiled_body(compiled, 1 << 20) in (None, encode_body([trace], 1 << 20)), change


def test_malformed_json_and_what_only_the_full_path_names_are_left_to_it() -> None:
    lone_surrogate = json.dumps([{**base_trace(), "prompt": "\ud800"}]).encode()
    for body in (b"[{", b"", lone_surrogate, b"[" * 5000 + b"]" * 5000, b'[{"meta": ' * 3000):
        assert decode_valid_batch(body) is None


def test_sample_traces_read_back_as_pydantic_reads_them_absent_meta_included() -> None:
    no_meta = {k: v for k, v in base_trace().items() if k != "meta"}
    traces = [*sample_traces(), no_meta, {**base_trace(), "meta": None}]
    body = orjson.dumps(traces, option=orjson.OPT_SORT_KEYS)
    decoded = decode_valid_batch(body)
    assert decoded is not None
    assert as_plain(decoded) == PYDANTIC.validate_json(body) == traces
    assert decoded[-2].get("meta") is None and decoded[-1].get("meta") is None


def orjson_columns_and_hash(trace: dict[str, Any]) -> tuple[bytes, bytes | None, str]:
    """Derivation version 2 as first written (orjson's canonical JSON): stored rows hold these values."""
    steps = orjson.dumps(trace["steps"], option=orjson.OPT_SORT_KEYS)
    meta = None if trace.get("meta") is None else orjson.dumps(trace["meta"], option=orjson.OPT_SORT_KEYS)
    texts = [trace[name].encode() for name in ("trace_version", "prompt", "final_answer")]
    return steps, meta, hashlib.sha256(b"\x00".join([*texts, steps, meta or b"null"])).hexdigest()


def test_stored_columns_and_derived_fields_are_the_same_from_dicts_and_from_compiled_structs() -> None:
    traces = sample_traces()
    decoded = decode_valid_batch(orjson.dumps(traces))
    assert decoded is not None
    for plain, compiled in zip(traces, decoded, strict=True):
        steps, meta, content_hash = orjson_columns_and_hash(plain)
        assert stored_row(plain) == stored_row(compiled)
        assert stored_row(compiled)[3:5] == (steps, meta)
        assert derive(plain) == derive(compiled)
        assert derive(compiled).content_hash == content_hash
    batch_id = uuid.uuid4()
    assert list(copy_chunks(batch_id, decoded)) == list(copy_chunks(batch_id, traces))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    characters = [chr(c) for c in [*range(0x80), 0xA0, 0xFF, 0x2028, 0x2029, 0xFEFF, 0x1F600, 0x10FFFF, 0xE000]]

    def text() -> str:
        return "".join(rng.choice(characters) for _ in range(rng.randint(0, 10)))

    roll = rng.random()
    if depth < 4 and roll < 0.2:
        return {text(): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 4 and roll < 0.35:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.55:
        bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        return bits if math.isfinite(bits) and abs(bits) < 1e16 else rng.uniform(-1e15, 1e15)
    if roll < 0.7:
        return rng.randint(-(2**63), 2**63 - 1)
    return rng.choice([True, False, None]) if roll < 0.75 else text()


def test_the_canonical_encoder_writes_what_orjson_wrote_byte_for_byte() -> None:
    rng = random.Random(20261204)
    for _ in range(20_000):
        meta = {"m": random_json(rng)}
        trace = {**base_trace(), "meta": meta}
        assert stored_row(trace).meta == orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)


def test_a_rule_the_compiler_cannot_translate_stops_it_at_import() -> None:
    class Lowered(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        name: Annotated[str, StringConstraints(to_lower=True)]

    class Lenient(TypedDict):
        name: str

    class Patterned(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        name: Annotated[str, StringConstraints(pattern="^[a-z]+$")]  # `$` differs between the two engines

    class Aliased(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        name: Annotated[str, Field(alias="Name")]

    class ConstrainedMember(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        name: Annotated[str, Field(max_length=3)] | None

    class CheckedItems(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        names: list[Annotated[str, AfterValidator(str.strip)]]

    class Stripping(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)  # type: ignore[misc]
        name: str

    class ListInUnion(TypedDict):
        __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
        names: list[str] | None

    refused = {
        Lowered: "to_lower",
        Lenient: "strict",
        Patterned: "pattern",
        Aliased: "alias",
        ConstrainedMember: "union",
        CheckedItems: "list items",
        Stripping: "no other setting",
        ListInUnion: "union",
    }
    for schema, reason in refused.items():
        with pytest.raises(TypeError, match=reason):
            compiled_schema._compiled(schema)


@pytest.mark.parametrize(
    ("body", "holds"),
    [
        (b'["no escapes at all", 1000, 0.0000]', False),
        (b'["a NUL \\u0000 inside"]', True),
        (b'["an escaped backslash, then text: \\\\u0000"]', False),
        (b'["a backslash, then a NUL: \\\\\\u0000"]', True),
        (b'["other escapes \\n \\" \\u0001 \\u00000"]', True),
        (b'["\\u0001", "\\t"]', False),
    ],
)
def test_holds_nul_reads_json_escapes_as_json_does(body: bytes, holds: bool) -> None:
    assert holds_nul(body) is holds
    assert ("\x00" in "".join(value for value in json.loads(body) if isinstance(value, str))) is holds


def test_holds_nul_agrees_with_the_decoded_strings_on_random_text() -> None:
    rng = random.Random(7)
    alphabet = ["\x00", "\\", "u", "0", "a", '"', "\n", "\x01"]
    for _ in range(5_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert holds_nul(orjson.dumps([text])) is ("\x00" in text)


def test_a_clients_json_array_becomes_the_body_the_python_producer_encodes_for_the_same_traces() -> None:
    traces = sample_traces()
    as_sent = json.dumps([dict(reversed(trace.items())) for trace in traces], indent=2).encode()
    from_client = validate_json_array(as_sent, max_batch=1000, max_bytes=8 << 20)
    from_python = validate_traces(traces, max_batch=1000, max_bytes=8 << 20)
    assert from_client is not None
    assert (from_client.body, from_client.content_hash) == (from_python.body, from_python.content_hash)
    assert as_plain(from_client.traces) == traces


@pytest.mark.parametrize(
    ("change", "body"),
    [
        ("no traces", b"[]"),
        ("one trace too many", json.dumps([base_trace()] * 4).encode()),
        ("a NUL", json.dumps([{**base_trace(), "prompt": "a\x00b"}]).encode()),
        ("a rule broken", json.dumps([{**base_trace(), "prompt": ""}]).encode()),
        ("over the byte limit", json.dumps([{**base_trace(), "prompt": "p" * 5000}]).encode()),
    ],
)
def test_what_the_fast_path_does_not_take_is_left_to_the_full_one(change: str, body: bytes) -> None:
    assert validate_json_array(body, max_batch=3, max_bytes=4096) is None, change


class Inner(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    name: Annotated[str, StringConstraints(min_length=1, max_length=3)]


class Outer(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    inner: Inner


def test_a_nested_object_field_is_compiled_with_its_own_rules() -> None:
    decoder = msgspec.json.Decoder(compiled_schema._compiled(Outer))
    assert decoder.decode(b'{"inner": {"name": "abc"}}').inner.name == "abc"  # type: ignore[attr-defined]
    for refused in (b'{"inner": {"name": "abcd"}}', b'{"inner": {"name": "a", "extra": 1}}'):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(refused)
