"""The trace schema of `models.schemas`, compiled to msgspec: the fast path that validates a batch from a body's
bytes (the worker, the HTTP route) or from Python objects (the producer).

`TraceIn` and `StepIn` stay the one definition of every §3 rule; this module translates their annotations
(lengths, bounds, `extra="forbid"`, strict types, after-validators) into msgspec Structs and refuses, at import,
any constraint it cannot translate, so the two can never drift apart. The fast path only ever *accepts*:
whatever it refuses is validated again by pydantic, whose errors are the messages users see (§3), so a body it
refuses costs the full path, never another answer.

The structs read like the TypedDicts' dicts (`trace["prompt"]`, `trace.get("meta")`), so one function derives
the stored columns of either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, NamedTuple, NotRequired, Union, get_args, get_origin, get_type_hints

import annotated_types
import msgspec
from pydantic import AfterValidator
from pydantic.fields import FieldInfo
from pydantic.types import StringConstraints

from models.schemas import TraceIn

#: Field(...) attributes that only document a field.
_DOCUMENTATION = {"title", "description", "examples"}

_BOUNDS = {
    annotated_types.Ge: "ge",
    annotated_types.Le: "le",
    annotated_types.Gt: "gt",
    annotated_types.Lt: "lt",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


def _bound(constraint: Any) -> tuple[str, Any]:
    for kind, name in _BOUNDS.items():
        if type(constraint) is kind:
            return name, getattr(constraint, name)
    raise TypeError(f"compiled_schema cannot translate the constraint {constraint!r}: add it to _BOUNDS")


def _string_bounds(constraints: StringConstraints) -> dict[str, Any]:
    translated: dict[str, Any] = {"min_length": constraints.min_length, "max_length": constraints.max_length}
    # A pattern is not translated: Python's `$` matches before a final newline, the Rust engine's does not.
    untranslated = [
        name
        for name in ("strip_whitespace", "to_upper", "to_lower", "strict", "ascii_only", "pattern")
        if getattr(constraints, name) is not None
    ]
    if untranslated:
        raise TypeError(f"compiled_schema cannot translate StringConstraints({', '.join(untranslated)})")
    return {name: value for name, value in translated.items() if value is not None}


class _Field(NamedTuple):
    """A schema field, translated."""

    #: The msgspec type, with its bounds.
    kind: Any
    #: Its after-validators, in order.
    validators: list[Callable[[Any], Any]]
    #: ("list" or "object", the compiled struct of the list's items or of the object, if any) when the field
    #: holds a container: where `msgspec.convert` would take what pydantic's strict mode refuses.
    container: tuple[str, type[msgspec.Struct] | None] | None


def _field(hint: Any) -> _Field:
    """A field's annotation translated; raises `TypeError` for anything the translation would lose."""
    validators: list[Callable[[Any], Any]] = []
    bounds: dict[str, Any] = {}
    container: tuple[str, type[msgspec.Struct] | None] | None = None
    if get_origin(hint) is Annotated:
        hint, *metadata = get_args(hint)
        for item in metadata:
            if isinstance(item, AfterValidator):
                validators.append(item.func)  # type: ignore[arg-type]
            elif isinstance(item, StringConstraints):
                bounds |= _string_bounds(item)
            elif isinstance(item, FieldInfo):
                if set(item._attributes_set) - _DOCUMENTATION:  # an alias, a default, …: not a constraint
                    raise TypeError(f"compiled_schema cannot translate Field({', '.join(item._attributes_set)})")
                bounds |= dict(_bound(constraint) for constraint in item.metadata)
            else:
                bounds |= dict([_bound(item)])
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if _is_typeddict(item):
            struct = _compiled(item)
            hint, container = list[struct], ("list", struct)  # type: ignore[valid-type]
        else:
            translated = _field(item)
            if translated.validators or translated.container:
                raise TypeError("compiled_schema cannot translate validators or containers of list items")
            hint = list[translated.kind]  # type: ignore[name-defined]
            container = ("list", None)
    elif _is_typeddict(hint):
        hint = _compiled(hint)
        container = ("object", hint)
    elif get_origin(hint) in (Union, UnionType):
        members = get_args(hint)
        if any(get_origin(member) in (Annotated, list) or _is_typeddict(member) for member in members):
            raise TypeError(f"compiled_schema cannot translate constraints or containers inside the union {hint}")
        if any(_is_object(member) for member in members):
            container = ("object", None)
    elif _is_object(hint):
        container = ("object", None)
    return _Field(Annotated[hint, msgspec.Meta(**bounds)] if bounds else hint, validators, container)


def _is_object(hint: Any) -> bool:
    return hint is dict or get_origin(hint) is dict


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__")


def _read_like_a_dict(self: msgspec.Struct, key: str, default: Any = None) -> Any:
    value = getattr(self, key, default)
    return default if value is msgspec.UNSET else value


def _post_init(validators: dict[str, list[Callable[[Any], Any]]]) -> Callable[[Any], None]:
    checks = tuple((name, tuple(functions)) for name, functions in validators.items())

    def run_after_validators(self: Any) -> None:
        for name, functions in checks:
            value = given = getattr(self, name)
            if value is msgspec.UNSET:  # pydantic runs no validator on a key that is absent
                continue
            for function in functions:
                value = function(value)
            if value is not given:  # most validators only check, and hand back what they were given
                setattr(self, name, value)

    return run_after_validators


_COMPILED: dict[type, type[msgspec.Struct]] = {}
#: Per compiled struct, its fields that hold containers: (name, "list" or "object", the struct inside, if any).
_CONTAINERS: dict[type, list[tuple[str, str, type[msgspec.Struct] | None]]] = {}


def _compiled(schema: type) -> type[msgspec.Struct]:
    """The msgspec Struct of a TypedDict schema: fields in sorted order, so that encoding one writes the
    canonical JSON (compact, sorted keys) that `derived.stored_row` stores and hashes."""
    if schema in _COMPILED:
        return _COMPILED[schema]
    config = getattr(schema, "__pydantic_config__", {})
    if config.get("extra") != "forbid" or config.get("strict") is not True or set(config) - {"extra", "strict"}:
        raise TypeError(
            f"{schema.__name__}: compiled_schema translates only strict schemas with extra='forbid' and no other "
            f"setting (got {dict(config)})"
        )
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    validators: dict[str, list[Callable[[Any], Any]]] = {}
    containers: list[tuple[str, str, type[msgspec.Struct] | None]] = []
    for name, hint in sorted(get_type_hints(schema, include_extras=True).items()):
        optional = get_origin(hint) is NotRequired
        hint = get_args(hint)[0] if optional else hint
        translated = _field(hint)
        if translated.container:
            containers.append((name, *translated.container))
        kind = translated.kind
        fields.append((name, kind | msgspec.UnsetType, msgspec.UNSET) if optional else (name, kind))
        if translated.validators:
            validators[name] = translated.validators
    namespace: dict[str, Any] = {"__getitem__": object.__getattribute__, "get": _read_like_a_dict}
    if validators:
        namespace["__post_init__"] = _post_init(validators)
    # Fields in sorted order (keyword-only, so optional ones may come before required ones): encoding a struct
    # in its own field order then writes sorted keys, without sorting them again at every encoding.
    compiled = msgspec.defstruct(
        schema.__name__ + "Struct", fields, forbid_unknown_fields=True, kw_only=True, namespace=namespace, gc=False
    )
    _COMPILED[schema] = compiled
    _CONTAINERS[compiled] = containers
    return compiled


TraceStruct = _compiled(TraceIn)
_BATCH = msgspec.json.Decoder(list[TraceStruct])  # type: ignore[valid-type]


def decode_valid_batch(body: bytes) -> list[Any] | None:
    """The traces of `body` when every one obeys every rule of `TraceIn`, else None (the full validation then
    names each problem). Storability (a NUL, a lone surrogate) is the caller's to check."""
    try:
        return _BATCH.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _strict_containers(value: Any, struct: type[msgspec.Struct]) -> bool:
    """Whether every container in `value` is of the kind pydantic's strict mode takes where `struct` has one:
    `msgspec.convert` also takes a tuple, set or frozenset for a list and any Mapping for an object."""
    if not isinstance(value, dict):  # where a TypedDict is, strict pydantic takes a dict and nothing else
        return False
    for name, kind, items in _CONTAINERS[struct]:
        field = value.get(name)
        if kind == "object":
            if isinstance(field, Mapping) and not isinstance(field, dict):
                return False
            if items is not None and isinstance(field, dict) and not _strict_containers(field, items):
                return False
        elif isinstance(field, tuple | set | frozenset):
            return False
        elif items is not None and isinstance(field, list):
            for item in field:
                if not _strict_containers(item, items):
                    return False
    return True


def convert_valid_batch(traces: list[Any]) -> list[Any] | None:
    """The traces (Python objects) as compiled structs when every one is a dict that obeys every rule of
    `TraceIn` as pydantic's strict mode reads it, else None (the full validation then names each problem).
    Storability is the caller's to check (`services.batch_body.encode_compiled_body`)."""
    if not all(_strict_containers(trace, TraceStruct) for trace in traces):
        return None
    try:
        return msgspec.convert(traces, list[TraceStruct])  # type: ignore[valid-type]
    except (msgspec.ValidationError, TypeError, ValueError, RecursionError):
        return None


#: Compact JSON with sorted keys, of plain values and of the compiled structs alike: byte for byte what
#: `orjson.dumps(..., option=OPT_SORT_KEYS)` writes for the same values (tests/unit/test_compiled_schema.py).
#: "deterministic" sorts a dict's keys and writes a struct's fields in their order, which `_compiled` sorts.
canonical_json = msgspec.json.Encoder(order="deterministic").encode


def as_plain(traces: list[Any]) -> list[dict[str, Any]]:
    """Traces as the plain dicts pydantic validates (a compiled struct's absent `meta` stays absent)."""
    return msgspec.to_builtins(traces)  # type: ignore[no-any-return]
