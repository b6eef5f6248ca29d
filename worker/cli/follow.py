"""`tunix-ingest follow`: stored traces as JSON lines on stdout, through a consumer group (PRODUCT.md §6b)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any, BinaryIO

import click
import orjson

from worker.cli.common import expected_failures
from worker.client.consumer import (
    FOLLOW_CONSUMERS,
    IngestedBatch,
    IngestedLines,
    follow_ingested_async,
    follow_ingested_lines_async,
)
from worker.edge.heap import keep_freed_memory_for_reuse


def batch_line(batch: IngestedBatch) -> bytes:
    """The `--batches` line: the batch's event fields and its traces (`id`, `position`, `created_at`, fields)."""
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


#: The most buffers one writev takes (POSIX guarantees at least 16; Linux takes 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16


def write_all(fd: int, pieces: list[bytes]) -> None:
    """Write every piece, in order, straight from the rows' own buffers (writev: no copy in Python), however
    little a pipe takes per call."""
    for start in range(0, len(pieces), _IOV_MAX):
        chunk = pieces[start : start + _IOV_MAX]
        written = os.writev(fd, chunk)
        if written < sum(map(len, chunk)):  # a pipe took part of it: the rest the plain way
            rest = memoryview(b"".join(chunk))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


@click.command()
@click.option("--group", default="follow", show_default=True, help="Consumer group: each group gets every batch once.")
@click.option("--consumer", help="This consumer's name in the group (default: host-pid).")
@click.option("--from-start", is_flag=True, help="A new group starts at the stream's beginning, not at now.")
@click.option("--limit", type=click.IntRange(1), help="Stop after this many batches (read one at a time).")
@click.option("--idle-exit", type=click.FloatRange(0), help="Stop after this many seconds without a new batch.")
@click.option(
    "--claim-idle",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="Take over batches another consumer of the group left unacknowledged this long (it died).",
)
@click.option("--batches", "per_batch", is_flag=True, help="One JSON line per batch instead of per trace.")
@click.option(
    "--parallel",
    type=click.IntRange(1, 16),
    default=FOLLOW_CONSUMERS,
    show_default=True,
    help="Consumers of the group in this process (CONSUMER/0, /1, …): batches load side by side, written whole.",
)
@expected_failures
def follow(
    group: str,
    consumer: str | None,
    from_start: bool,
    limit: int | None,
    idle_exit: float | None,
    claim_idle: float,
    per_batch: bool,
    parallel: int,
) -> None:
    """Write every stored trace (or batch) to stdout as JSON lines, once per group, flushed per batch.

    A batch is acknowledged only after its lines are written, so Ctrl-C or a crash leaves it for a later run
    (or another consumer of the group): at least once, never half.
    """
    keep_freed_memory_for_reuse()  # one JSON encoding per trace: see worker/edge/heap.py
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    names = [name] if parallel == 1 or limit is not None else [f"{name}/{index}" for index in range(parallel)]
    exporter = _Exporter(sys.stdout.buffer, per_batch=per_batch, limit=limit)
    try:
        asyncio.run(exporter.run(group, names, from_start=from_start, claim_idle=claim_idle, idle_exit=idle_exit))
    except BrokenPipeError:  # `follow | head`: the reader is gone; the batch being written stays unacknowledged
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return
    click.echo(exporter.summary(), err=True)
    if exporter.interrupted:
        raise click.Abort()


class _Exporter:
    """Consumers of one group in one process: each loads its own batches (its own session and connections,
    never shared), and writes them whole, one at a time, in a thread, so the others keep loading."""

    def __init__(self, out: BinaryIO, *, per_batch: bool, limit: int | None) -> None:
        self.out, self.per_batch, self.limit = out, per_batch, limit
        self.handed = self.traces = 0
        self.started = self.last_written = time.monotonic()
        self.writing = asyncio.Lock()
        self.stop = asyncio.Event()
        self.interrupted = False

    def _write(self, pieces: list[bytes]) -> None:
        self.out.flush()
        write_all(self.out.fileno(), pieces)

    def summary(self) -> str:
        """What was handed over, and how fast: from joining the group to the last batch written (the idle
        wait before an `--idle-exit` is not in it)."""
        took = self.last_written - self.started
        rate = f", {self.traces / took:,.0f} traces/s" if took > 0 else ""
        return f"handed over {self.handed} batches ({self.traces:,} traces) in {took:.2f} s{rate}"

    def _interrupt(self) -> None:
        self.interrupted = True
        self.stop.set()

    async def run(
        self, group: str, names: list[str], *, from_start: bool, claim_idle: float, idle_exit: float | None
    ) -> None:
        """Ctrl-C (or SIGTERM) stops every consumer after its current read: what was written is acknowledged,
        nothing is left half-written or half-acknowledged."""
        self.started = self.last_written = time.monotonic()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._interrupt)
        await asyncio.gather(*(self._consume(group, name, from_start, claim_idle, idle_exit) for name in names))

    async def _consume(
        self, group: str, name: str, from_start: bool, claim_idle: float, idle_exit: float | None
    ) -> None:
        options: dict[str, Any] = {
            "from_start": from_start,
            "claim_idle_s": claim_idle,
            "idle_exit_s": idle_exit,
            "stop": self.stop,
        }
        batches: AsyncGenerator[IngestedBatch | IngestedLines, bool | None]
        if self.per_batch:
            # steps and meta go out as PostgreSQL sent them: never parsed, never encoded again
            batches = follow_ingested_async(group, name, raw_json=True, **options)
        else:
            batches = follow_ingested_lines_async(group, name, **options)  # the lines as PostgreSQL made them
        async with contextlib.aclosing(batches):
            async for batch in batches:
                pieces = [batch_line(batch)] if isinstance(batch, IngestedBatch) else batch.lines
                async with self.writing:  # whole batches: lines of two batches never interleave
                    await asyncio.to_thread(self._write, pieces)
                self.handed += 1
                self.traces += len(batch.traces) if isinstance(batch, IngestedBatch) else len(batch.lines)
                self.last_written = time.monotonic()
                if self.limit is not None and self.handed >= self.limit:
                    with contextlib.suppress(StopAsyncIteration):
                        await batches.asend(True)  # acknowledge this last batch, then stop
                    return
