"""The consuming figures: `tunix-ingest follow` exporting everything stored to a file, as users run it, and the
ceiling it cannot pass: the same SELECT of every batch, on parallel connections, with no consumer around it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import asyncpg

from worker.client.consumer_group import LOAD_LINES
from worker.devtools.processes import cli_command

#: How long `follow` waits for more before it exits: outside the rate, which ends at the last line written.
IDLE_EXIT_S = 1.0


def follow_rate(work_dir: Path, parallel: int) -> dict[str, float]:
    """`follow --from-start --idle-exit 1 > FILE` in a new group. The rate runs from the first batch on the file
    to the last (its size polled every 10 ms), so neither start-up nor the idle exit is in it; `startup_s` is
    the time to that first batch (the interpreter, the imports, joining the group, the first SELECT)."""
    output = work_dir / "follow.jsonl"
    command = cli_command("follow", "--group", "bench", "--from-start", "--idle-exit", str(IDLE_EXIT_S))
    size = 0
    first: tuple[float, int] | None = None
    last = 0.0
    with output.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen([*command, "--parallel", str(parallel)], stdout=sink, stderr=subprocess.PIPE)
        while process.poll() is None:
            grown = output.stat().st_size
            if grown != size:
                size, last = grown, time.perf_counter()
                first = first or (last, size)
            time.sleep(0.01)
    _, stderr = process.communicate()
    if process.returncode != 0 or first is None:
        raise RuntimeError(f"follow failed ({process.returncode}): {stderr.decode(errors='replace')[-500:]}")
    size = output.stat().st_size
    lines = _count_lines(output)
    output.unlink()
    first_at, first_size = first
    return {
        "rate": (size - first_size) / (last - first_at) * lines / size if last > first_at else 0.0,
        "startup_s": first_at - started,
        "traces": lines,
        "mib": size / 2**20,
        "parallel": parallel,
    }


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

    readers = [await asyncpg.connect(dsn, server_settings={"timezone": "UTC"}) for _ in range(connections)]

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
