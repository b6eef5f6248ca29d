"""`tunix-ingest follow`: stored traces as JSON lines on stdout, through a consumer group (PRODUCT.md §6b)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Any

import click
import orjson

from worker.cli.common import expected_failures
from worker.consumer import IngestedBatch, follow_ingested
from worker.heap import keep_freed_memory_for_reuse


def batch_lines(batch: IngestedBatch, *, per_batch: bool) -> bytes:
    """One JSON line per stored trace (`batch_id`, `id`, `position`, `created_at` and its fields), or one per batch."""
    if per_batch:
        return orjson.dumps(
            {
                "batch_id": batch.batch_id,
                "source": batch.source,
                "created_at": batch.created_at,
                "count": len(batch.traces),
                "traces": batch.traces,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
    return b"".join(
        orjson.dumps({"batch_id": batch.batch_id, **trace}, option=orjson.OPT_APPEND_NEWLINE) for trace in batch.traces
    )


@click.command()
@click.option("--group", default="follow", show_default=True, help="Consumer group: each group gets every batch once.")
@click.option("--consumer", help="This consumer's name in the group (default: host-pid).")
@click.option("--from-start", is_flag=True, help="A new group starts at the stream's beginning, not at now.")
@click.option("--limit", type=click.IntRange(1), help="Stop after this many batches.")
@click.option("--idle-exit", type=click.FloatRange(0), help="Stop after this many seconds without a new batch.")
@click.option(
    "--claim-idle",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="Take over batches another consumer of the group left unacknowledged this long (it died).",
)
@click.option("--batches", "per_batch", is_flag=True, help="One JSON line per batch instead of per trace.")
@expected_failures
def follow(
    group: str,
    consumer: str | None,
    from_start: bool,
    limit: int | None,
    idle_exit: float | None,
    claim_idle: float,
    per_batch: bool,
) -> None:
    """Write every stored trace (or batch) to stdout as JSON lines, once per group, flushed per batch.

    A batch is acknowledged only after its lines are written, so Ctrl-C or a crash leaves it for a later run
    (or another consumer of the group): at least once, never half.
    """
    keep_freed_memory_for_reuse()  # one JSON encoding per trace: see worker/heap.py
    out: Any = sys.stdout.buffer
    handed = 0
    batches = follow_ingested(
        group,
        consumer or f"{socket.gethostname()}-{os.getpid()}",
        from_start=from_start,
        claim_idle_s=claim_idle,
        idle_exit_s=idle_exit,
        raw_json=True,  # steps and meta go out as PostgreSQL sent them: never parsed, never encoded again
    )
    for batch in batches:
        try:
            out.write(batch_lines(batch, per_batch=per_batch))
            out.flush()
        except BrokenPipeError:  # `follow | head`: the reader is gone; this batch stays unacknowledged
            batches.close()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return
        handed += 1
        if limit is not None and handed >= limit:
            with contextlib.suppress(StopIteration):
                batches.send(True)  # acknowledge this last batch, then stop
            break
    click.echo(f"handed over {handed} batches", err=True)
