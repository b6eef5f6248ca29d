"""The consuming figures: `tunix-ingest follow` exporting everything stored to a file, as users run it, and the
ceiling it cannot pass: the same SELECT of every batch, on parallel connections, with no consumer around it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import asyncpg

from worker.client.consumer_statements import LOAD_LINES
from worker.localstack.processes import cli_command

#: How long `follow` waits for more before it exits: outside its rate, which ends at the last batch written.
IDLE_EXIT_S = 1.0
_SUMMARY = re.compile(rb"handed over \d+ batches \(([\d,]+) traces\) in ([\d.]+) s")


def follow_rate(work_dir: Path, parallel: int) -> dict[str, float]:
    """`follow --from-start --idle-exit 1 > FILE` in a new group, as users run it. The rate is the one it prints:
    from joining the group to the last batch written; `wall_s` is the whole command, with the interpreter's
    start-up and the idle exit."""
    output = work_dir / "follow.jsonl"
    command = cli_command("follow", "--group", "bench", "--from-start", "--idle-exit", str(IDLE_EXIT_S))
    with output.open("wb") as sink:
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--parallel", str(parallel)], stdout=sink, stderr=subprocess.PIPE, timeout=3600, check=False
        )
        wall = time.perf_counter() - started
    summary = _SUMMARY.search(done.stderr)
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"follow failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    traces, took = int(summary[1].replace(b",", b"")), float(summary[2])
    if traces == 0 or took <= 0:
        raise RuntimeError(f"follow handed nothing over: {summary[0].decode()}")
    figures = {
        "rate": traces / took,
        "seconds": took,
        "wall_s": wall,
        "traces": traces,
        "lines": _count_lines(output),
        "mib": output.stat().st_size / 2**20,
        "parallel": parallel,
    }
    output.unlink()
    return figures


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as exported:
        while chunk := exported.read(1 << 20):
            count += chunk.count(b"\n")
    return count


async def select_ceiling(dsn: str, connections: int) -> float:
    """Traces per second that `connections` parallel connections read with the consumer's own SELECT (each
    batch's rows as JSON lines) and drop: what PostgreSQL and the driver alone cost."""
    admin = await asyncpg.connect(dsn)
    try:
        batches = [
            row[0] for row in await admin.fetch("SELECT array_agg(id ORDER BY position) FROM trace GROUP BY batch_id")
        ]
    finally:
        await admin.close()
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for ids in batches:
        queue.put_nowait(ids)

    readers = [await asyncpg.connect(dsn) for _ in range(connections)]

    async def read(connection: asyncpg.Connection) -> None:
        while not queue.empty():
            await connection.fetch(LOAD_LINES, queue.get_nowait())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(read(connection) for connection in readers))  # one connection per coroutine
        elapsed = time.perf_counter() - started
    finally:
        for connection in readers:
            await connection.close()
    return sum(len(ids) for ids in batches) / elapsed
