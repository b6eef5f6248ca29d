"""Traces from JSONL: a clear reason and line number for every bad line, and enqueueing the good ones."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from services.delivery.parked_rows import raw_payload_text
from services.errors import BatchRejected, EnqueueFailed, QueueFull
from services.json_depth import nesting_problem, too_deep_field
from services.lenient_json import loads_lenient
from worker.client.enqueue import BatchReceipt, check_source, enqueue_batch


class JsonlLine(NamedTuple):
    """One non-blank line: its number (from 1), the decoded object, or why it could not be decoded (and the
    field at fault, when one is)."""

    number: int
    value: dict[str, Any] | None
    problem: str | None
    field: str | None = None


def loads_json(raw: bytes) -> Any:
    """orjson, falling back to the standard parser for what orjson refuses but validation should name."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The lenient parser also takes escaped lone surrogates and oversize integers, so that validation can
        # name the field that holds one.
        return loads_lenient(raw)


def read_jsonl(lines: Iterable[bytes], *, first_number: int = 1) -> Iterator[JsonlLine]:
    for number, raw in enumerate(lines, start=first_number):
        if not raw.strip():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield JsonlLine(number, None, f"not valid UTF-8 (byte {error.start})")
            continue
        try:
            value = loads_json(raw)
        except json.JSONDecodeError as error:
            yield JsonlLine(number, None, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        except RecursionError:
            _, field = too_deep_field(raw, in_array=False) or (0, "trace")
            if field == "trace":  # the line itself nests, not one of its fields
                yield JsonlLine(number, None, "not valid JSON here: nested too deeply")
            else:
                yield JsonlLine(number, None, nesting_problem(field), field)
            continue
        if not isinstance(value, dict):
            yield JsonlLine(number, None, f"a trace must be a JSON object, not {type(value).__name__}")
            continue
        yield JsonlLine(number, value, None)


class JsonlProblem(NamedTuple):
    """Why one line was left out: its number, the field at fault (None when the line itself is), the reason."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}" if self.field else f"line {self.line}: {self.message}"


class JsonlOutcome(NamedTuple):
    """What enqueueing a JSONL file did: receipts of the batches sent, and every problem by line number."""

    receipts: list[BatchReceipt]
    #: In line order; a line may have several problems.
    problems: list[JsonlProblem]
    lines: int

    @property
    def invalid_lines(self) -> int:
        return len({problem.line for problem in self.problems})

    @property
    def traces_enqueued(self) -> int:
        return sum(receipt.trace_count for receipt in self.receipts)


#: Batch ids of JSONL chunks are derived from their content under this namespace.
_CHUNK_NAMESPACE = uuid.UUID("0d5bb3a4-5f3e-4f55-9c1e-2b7f6a4f1d20")
#: Tries of one chunk when Redis does not confirm it (each with the same batch id, so never stored twice).
ENQUEUE_TRIES = 3


def chunk_batch_id(source: str, traces: list[Any]) -> uuid.UUID:
    """The same id for the same traces from the same source: running the same command again after it was
    interrupted stores nothing twice."""
    try:
        content = orjson.dumps(traces, option=orjson.OPT_SORT_KEYS, default=str)
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate, deep nesting: validation names it
        content = raw_payload_text(traces).encode()
    return uuid.uuid5(_CHUNK_NAMESPACE, f"{source}\x00{hashlib.sha256(content).hexdigest()}")


def _send(traces: list[Any], source: str, wait_when_full: bool) -> BatchReceipt:
    """Enqueue one chunk, waiting out backpressure (or raising `QueueFull`) and retrying an unknown outcome
    with the same batch id."""
    batch_id = chunk_batch_id(source, traces)
    unconfirmed = 0
    while True:
        try:
            return enqueue_batch(traces, source=source, batch_id=batch_id)
        except QueueFull as full:  # nothing was enqueued: the workers catch up, then the same chunk goes
            if not wait_when_full:
                raise
            time.sleep(full.retry_after)
        except EnqueueFailed:
            unconfirmed += 1
            if unconfirmed >= ENQUEUE_TRIES:
                raise
            time.sleep(unconfirmed)


def _enqueue_chunk(
    chunk: list[JsonlLine], source: str, problems: list[JsonlProblem], wait_when_full: bool
) -> list[BatchReceipt]:
    """Enqueue the valid traces of `chunk`; note each invalid one by line number and leave it out.
    A chunk over the byte limit is split in halves; a single trace over it is reported as its line."""
    while chunk:
        try:
            return [_send([line.value for line in chunk], source, wait_when_full)]
        except BatchRejected as rejected:
            per_trace = [error for error in rejected.errors if error.trace_index is not None]
            if not per_trace:  # the batch as a whole is too big
                if len(chunk) == 1:
                    problems.append(JsonlProblem(chunk[0].number, None, rejected.errors[0].message))
                    return []
                half = len(chunk) // 2
                return _enqueue_chunk(chunk[:half], source, problems, wait_when_full) + _enqueue_chunk(
                    chunk[half:], source, problems, wait_when_full
                )
            for error in per_trace:
                number = chunk[error.trace_index].number  # type: ignore[index]
                problems.append(JsonlProblem(number, error.field_path, error.message))
            invalid = {error.trace_index for error in per_trace}
            chunk = [line for index, line in enumerate(chunk) if index not in invalid]
    return []


def enqueue_jsonl(
    lines: list[JsonlLine],
    *,
    source: str,
    batch_size: int,
    progress: Callable[[list[list[JsonlLine]]], Iterable[list[JsonlLine]]] = iter,
    wait_when_full: bool = True,
) -> JsonlOutcome:
    """Enqueue every valid line in batches of `batch_size`; every invalid line is reported and left out, and
    nothing valid is lost because of it (`tunix-ingest enqueue`, `run --file` and the HTTP API share this).

    Raises `BatchRejected` for a bad `source` before anything is sent, and `QueueFull` instead of waiting when
    `wait_when_full` is off: sending the same lines again stores nothing twice (chunk ids follow content).
    """
    check_source(source)
    problems = [JsonlProblem(line.number, line.field, line.problem) for line in lines if line.problem]
    good = [line for line in lines if line.value is not None]
    chunks = [good[start : start + batch_size] for start in range(0, len(good), batch_size)]
    receipts: list[BatchReceipt] = []
    for chunk in progress(chunks):
        receipts += _enqueue_chunk(chunk, source, problems, wait_when_full)
    return JsonlOutcome(receipts, sorted(problems, key=lambda problem: problem.line), len(lines))
