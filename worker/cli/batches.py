"""Commands about batches: enqueue a JSONL file, show one batch, re-drive failed ones."""

from __future__ import annotations

import json
import sys
from typing import BinaryIO
from uuid import UUID

import click

from services.errors import BatchRejected
from services.reports import get_batch_status
from services.reprocess import find_failed_batches, redrive_batch
from worker.cli.common import ExpectedFailure, expected_failures, json_ready
from worker.enqueue import BatchReceipt, enqueue_batch, resend_message_async, wait_for_outcomes
from worker.jsonl import JsonlLine, read_jsonl
from worker.oneshot import with_session
from worker.settings import get_settings


def _enqueue_chunk(chunk: list[JsonlLine], source: str, bad: list[str]) -> list[BatchReceipt]:
    """Enqueue the valid traces of `chunk`; report each invalid one by line number and leave it out.
    A chunk over the byte limit is split in halves; a single trace over it is reported as its line."""
    while chunk:
        try:
            return [enqueue_batch([line.value for line in chunk], source=source)]
        except BatchRejected as rejected:
            per_trace = [error for error in rejected.errors if error.trace_index is not None]
            if not per_trace:  # the batch as a whole is too big
                if len(chunk) == 1:
                    bad.append(f"line {chunk[0].number}: {rejected.errors[0].message}")
                    return []
                half = len(chunk) // 2
                return _enqueue_chunk(chunk[:half], source, bad) + _enqueue_chunk(chunk[half:], source, bad)
            invalid = {error.trace_index for error in per_trace}
            bad.extend(
                f"line {chunk[e.trace_index].number}: {e.field_path}: {e.message}"  # type: ignore[index]
                for e in per_trace
            )
            chunk = [line for index, line in enumerate(chunk) if index not in invalid]
    return []


@click.command()
@click.argument("file", type=click.File("rb"))
@click.option("--source", default="cli", show_default=True, help="Producer name stored with each batch.")
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True, help="Traces per batch.")
@click.option("--wait/--no-wait", default=False, help="Wait for every batch and print stored/rejected counts.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait with --wait.")
@expected_failures
def enqueue(file: BinaryIO, source: str, batch_size: int, wait: bool, timeout: float) -> None:
    """Validate FILE (JSONL, one trace per line; `-` for stdin) and enqueue it in batches.

    Invalid lines are reported with their line number and left out; every valid line is enqueued.
    Exits 1 if any line was invalid.
    """
    limit = min(batch_size, get_settings().ingest_max_batch)
    lines = list(read_jsonl(file))
    bad = [f"line {line.number}: {line.problem}" for line in lines if line.problem]
    good = [line for line in lines if line.value is not None]
    if not lines:
        raise ExpectedFailure(f"no traces in {file.name}")
    chunks = [good[start : start + limit] for start in range(0, len(good), limit)]
    receipts: list[BatchReceipt] = []
    with click.progressbar(chunks, label="enqueueing", file=sys.stderr, show_pos=True) as progress:
        for chunk in progress:
            receipts += _enqueue_chunk(chunk, source, bad)
    enqueued = sum(receipt.trace_count for receipt in receipts)
    click.echo(f"enqueued {enqueued} traces in {len(receipts)} batches; {len(bad)} lines rejected")
    for problem in bad:
        click.echo(problem, err=True)
    if wait:
        stored, rejected = wait_for_outcomes(receipts, timeout=timeout)
        click.echo(f"stored {stored} traces; rejected {rejected}")
    if bad:
        raise ExpectedFailure(f"{len(bad)} of {len(lines)} lines were invalid and not enqueued")


@click.command()
@click.argument("batch_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@expected_failures
def status(batch_id: UUID, as_json: bool) -> None:
    """Show a batch's state, counts, errors and when it was published."""
    found = with_session(lambda session: get_batch_status(session, batch_id))
    if found is None:
        raise ExpectedFailure(f"no batch {batch_id}")
    if as_json:
        click.echo(json.dumps(json_ready(found)))
        return
    for name, value in found.model_dump().items():
        if name != "errors":
            click.echo(f"{name:>14}  {value if value is not None else '-'}")
    for error in found.errors:
        where = "batch" if error.get("trace_index") is None else f"trace {error['trace_index']}"
        click.echo(f"{'error':>14}  {where}: {error.get('field_path')}: {error.get('message')}")


@click.command()
@click.option("--batch", "batch_ids", type=click.UUID, multiple=True, help="A failed batch to re-drive.")
@click.option("--all", "all_failed", is_flag=True, help="Re-drive every failed batch.")
@expected_failures
def redrive(batch_ids: tuple[UUID, ...], all_failed: bool) -> None:
    """Send failed batches back to the ingest queue (their raw payload, as first received)."""
    if not batch_ids and not all_failed:
        raise click.UsageError("name a batch with --batch ID or use --all")
    targets = list(batch_ids) or with_session(find_failed_batches)
    max_redrives = get_settings().max_redrives + 1  # an operator may always try once more than the schedule
    sent = 0
    for batch_id in targets:
        sent += with_session(
            lambda session, b=batch_id: redrive_batch(  # type: ignore[misc]
                session, b, resend=resend_message_async, max_redrives=max_redrives
            )
        )
    click.echo(f"re-drove {sent} of {len(targets)} batches")
    if batch_ids and sent < len(targets):
        raise ExpectedFailure("some batches were not failed (or used up their re-drives) and were not sent")
