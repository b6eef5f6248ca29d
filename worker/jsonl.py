"""Traces from JSONL: a clear reason and line number for every bad line, and enqueueing the good ones."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from services.errors import BatchRejected, EnqueueFailed, QueueFull
from worker.enqueue import BatchReceipt, check_source, enqueue_batch


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


class JsonlOutcome(NamedTuple):
    """What enqueueing a JSONL file did: receipts of the batches sent, and every problem by line number."""

    receipts: list[BatchReceipt]
    #: (line number, "line N: field: reason"), in line order; a line may have several problems.
    problems: list[tuple[int, str]]
    lines: int

    @property
    def invalid_lines(self) -> int:
        return len({number for number, _ in self.problems})

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
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate: validation names it, the id needs bytes
        content = json.dumps(traces, sort_keys=True, default=str).encode()
    return uuid.uuid5(_CHUNK_NAMESPACE, f"{source}\x00{hashlib.sha256(content).hexdigest()}")


def _send(traces: list[Any], source: str) -> BatchReceipt:
    """Enqueue one chunk, waiting out backpressure and retrying an unknown outcome with the same batch id."""
    batch_id = chunk_batch_id(source, traces)
    unconfirmed = 0
    while True:
        try:
            return enqueue_batch(traces, source=source, batch_id=batch_id)
        except QueueFull as full:  # nothing was enqueued: the workers catch up, then the same chunk goes
            time.sleep(full.retry_after)
        except EnqueueFailed:
            unconfirmed += 1
            if unconfirmed >= ENQUEUE_TRIES:
                raise
            time.sleep(unconfirmed)


def _enqueue_chunk(chunk: list[JsonlLine], source: str, problems: list[tuple[int, str]]) -> list[BatchReceipt]:
    """Enqueue the valid traces of `chunk`; note each invalid one by line number and leave it out.
    A chunk over the byte limit is split in halves; a single trace over it is reported as its line."""
    while chunk:
        try:
            return [_send([line.value for line in chunk], source)]
        except BatchRejected as rejected:
            per_trace = [error for error in rejected.errors if error.trace_index is not None]
            if not per_trace:  # the batch as a whole is too big
                if len(chunk) == 1:
                    problems.append((chunk[0].number, f"line {chunk[0].number}: {rejected.errors[0].message}"))
                    return []
                half = len(chunk) // 2
                return _enqueue_chunk(chunk[:half], source, problems) + _enqueue_chunk(chunk[half:], source, problems)
            for error in per_trace:
                number = chunk[error.trace_index].number  # type: ignore[index]
                problems.append((number, f"line {number}: {error.field_path}: {error.message}"))
            invalid = {error.trace_index for error in per_trace}
            chunk = [line for index, line in enumerate(chunk) if index not in invalid]
    return []


def enqueue_jsonl(
    lines: list[JsonlLine],
    *,
    source: str,
    batch_size: int,
    progress: Callable[[list[list[JsonlLine]]], Iterable[list[JsonlLine]]] = iter,
) -> JsonlOutcome:
    """Enqueue every valid line in batches of `batch_size`; every invalid line is reported and left out, and
    nothing valid is lost because of it (`tunix-ingest enqueue` and `run --file` share this). Raises
    `BatchRejected` for a bad `source` before anything is sent."""
    check_source(source)
    problems = [(line.number, f"line {line.number}: {line.problem}") for line in lines if line.problem]
    good = [line for line in lines if line.value is not None]
    chunks = [good[start : start + batch_size] for start in range(0, len(good), batch_size)]
    receipts: list[BatchReceipt] = []
    for chunk in progress(chunks):
        receipts += _enqueue_chunk(chunk, source, problems)
    return JsonlOutcome(receipts, sorted(problems, key=lambda problem: problem[0]), len(lines))
