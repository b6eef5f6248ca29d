"""Commands about batches: enqueue a JSONL file, show one batch, re-drive failed ones."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import BinaryIO
from uuid import UUID

import click

from services.reports import get_batch_status
from services.reprocess import find_failed_batches, redrive_batch
from worker.cli.common import ExpectedFailure, expected_failures, json_ready
from worker.client.enqueue import wait_for_outcomes
from worker.client.jsonl import JsonlLine, JsonlOutcome, enqueue_jsonl, read_jsonl
from worker.edge.hand_over import resend_message_async
from worker.edge.oneshot import with_session
from worker.settings import get_settings


def invalid_lines_summary(outcome: JsonlOutcome) -> str:
    problems = len(outcome.problems)
    detail = f" ({problems} problems)" if problems != outcome.invalid_lines else ""
    return f"{outcome.invalid_lines} of {outcome.lines} lines were invalid and not enqueued{detail}"


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
    lines = list(read_jsonl(file))
    if not lines:
        raise ExpectedFailure(f"no traces in {file.name}")

    def progress(chunks: list[list[JsonlLine]]) -> Iterator[list[JsonlLine]]:
        with click.progressbar(chunks, label="enqueueing", file=sys.stderr, show_pos=True) as bar:
            yield from bar

    outcome = enqueue_jsonl(
        lines, source=source, batch_size=min(batch_size, get_settings().ingest_max_batch), progress=progress
    )
    click.echo(
        f"enqueued {outcome.traces_enqueued} traces in {len(outcome.receipts)} batches; "
        f"{outcome.invalid_lines} lines rejected"
    )
    for problem in outcome.problems:
        click.echo(str(problem), err=True)
    if wait:
        stored, rejected = wait_for_outcomes(outcome.receipts, timeout=timeout)
        click.echo(f"stored {stored} traces; rejected {rejected}")
    if outcome.problems:
        raise ExpectedFailure(invalid_lines_summary(outcome))


@click.command()
@click.argument("batch_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@expected_failures
def status(batch_id: UUID, as_json: bool) -> None:
    """Show a batch's state, counts, errors, when it was published, and any other traces sent under its id
    (conflicts, not stored)."""
    found = with_session(lambda session: get_batch_status(session, batch_id))
    if found is None:
        raise ExpectedFailure(f"no batch {batch_id}")
    if as_json:
        click.echo(json.dumps(json_ready(found)))
        return
    for name, value in found.model_dump().items():
        if name not in ("errors", "conflicts"):
            click.echo(f"{name:>14}  {value if value is not None else '-'}")
    for error in found.errors:
        where = "batch" if error.get("trace_index") is None else f"trace {error['trace_index']}"
        click.echo(f"{'error':>14}  {where}: {error.get('field_path')}: {error.get('message')}")
    for conflict in found.conflicts:  # this id reused for other traces, none of them stored
        click.echo(
            f"{'conflict':>14}  {conflict.detected_at}: {conflict.trace_count} traces from {conflict.source} "
            f"(sha256 {conflict.content_hash}) reused this id and were not stored"
        )


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
