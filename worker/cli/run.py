"""`tunix-ingest run`: the whole product on this machine, on throwaway servers unless told otherwise."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from worker.cli.batches import invalid_lines_summary
from worker.cli.common import ExpectedFailure
from worker.cli.migrate import upgrade_to_head
from worker.client.enqueue import wait_for_outcomes
from worker.client.jsonl import JsonlLine, enqueue_jsonl, read_jsonl
from worker.localstack.ports import free_port
from worker.localstack.processes import api_process, beat_process, flower_process, worker_process
from worker.localstack.sample_traces import generate_traces
from worker.localstack.servers import local_servers
from worker.monitoring.store_figures import collect_stats
from worker.settings import redact


class _Stop(Exception):
    """SIGTERM or SIGINT: stop everything cleanly."""


class _StopSignals:
    """SIGINT and SIGTERM raise `_Stop` once. After that, and once the processes are being stopped, further ones
    are ignored: a second Ctrl-C must not cut the clean-up short and leave worker, beat or Flower running."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stop(signal.Signals(signum).name)


def _lines(file: Path | None, count: int) -> list[JsonlLine]:
    if file is None:
        return [JsonlLine(number, trace, None) for number, trace in enumerate(generate_traces(count), start=1)]
    with file.open("rb") as lines:
        return list(read_jsonl(lines))


def _ingest(lines: list[JsonlLine], batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = enqueue_jsonl(lines, source="tunix-ingest run", batch_size=batch_size)
    for problem in outcome.problems:
        click.echo(str(problem), err=True)
    stored, rejected = wait_for_outcomes(outcome.receipts, timeout=300)
    elapsed = time.perf_counter() - started
    return {
        "batches": len(outcome.receipts),
        "stored": stored,
        "rejected": rejected,
        "seconds": elapsed,
        "rate": stored / elapsed if elapsed else 0.0,
        "invalid_lines": invalid_lines_summary(outcome) if outcome.problems else None,
    }


def _run_processes(
    log_dir: Path,
    concurrency: int,
    keep_running: bool,
    ingest: Callable[[], dict[str, Any]],
    signals: _StopSignals,
) -> str | None:
    """Start worker, beat, Flower and the HTTP API, ingest, print the summary; stop the processes before the
    servers go. Returns what was wrong with the input, if anything."""
    flower_port, api_port = free_port(), free_port()
    worker = worker_process("run", log_dir, concurrency=concurrency).start()
    # Its own loopback API, for the developer on this host: anonymous by explicit opt-in (tokens, if set, still rule).
    api = api_process(log_dir, api_port, env={**os.environ, "INGEST_API_ALLOW_ANONYMOUS": "1"})
    children = [worker, beat_process(log_dir).start(), flower_process(log_dir, flower_port).start(), api.start()]
    try:
        worker.wait_for_log(b" ready.")
        api.wait_for_log(b"Application startup complete")
        click.echo(f"worker ready ({concurrency} processes); beat, Flower and the HTTP API started; logs in {log_dir}")
        summary = ingest()
        figures = collect_stats()
        click.echo(
            f"stored {summary['stored']} traces in {summary['batches']} batches, rejected {summary['rejected']}, "
            f"{summary['rate']:.0f} traces/s end to end ({summary['seconds']:.1f} s)\n"
            f"database now holds {figures.traces_stored} traces; unpublished batches: "
            f"{figures.unpublished_batches}; queue depth: {figures.queue_depth}\n"
            f"Flower: http://127.0.0.1:{flower_port}/  HTTP API: http://127.0.0.1:{api_port}/ (docs at /docs)  "
            f"database: {redact(os.environ['DATABASE_URL'])}"
        )
        if summary["invalid_lines"]:
            click.echo(f"{summary['invalid_lines']} (see above)", err=True)
        if keep_running:
            click.echo("running; press Ctrl-C to stop")
            while all(child.running() for child in children):
                time.sleep(0.5)
            click.echo("a child process exited; stopping", err=True)
        invalid_input: str | None = summary["invalid_lines"]
        return invalid_input
    finally:
        signals.stopping = True
        for child in reversed(children):
            child.stop()


@click.command()
@click.option(
    "--traces",
    "trace_count",
    type=click.IntRange(1),
    default=5000,
    show_default=True,
    help="How many generated sample traces to ingest.",
)
@click.option(
    "--file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ingest this JSONL file instead of generated traces.",
)
@click.option("--batch-size", type=click.IntRange(1, 1000), default=500, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=2, show_default=True, help="Worker processes.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".tunix"),
    show_default=True,
    help="Where throwaway servers keep their data and logs.",
)
@click.option(
    "--keep-running/--exit-after-ingest",
    default=True,
    show_default=True,
    help="Keep worker, beat, Flower and the HTTP API running until Ctrl-C, or stop after the summary.",
)
def run(
    trace_count: int,
    file: Path | None,
    batch_size: int,
    concurrency: int,
    state_dir: Path,
    keep_running: bool,
) -> None:
    """Run the main job: servers, migrations, worker + beat + Flower + HTTP API, a sample ingest and its summary.

    Without DATABASE_URL / REDIS_URL it starts throwaway PostgreSQL and Redis under --state-dir and removes
    them on exit. Ctrl-C stops every process it started.
    """
    signals = _StopSignals()
    previous = {sig: signal.signal(sig, signals) for sig in (signal.SIGINT, signal.SIGTERM)}
    invalid_input = None
    state_dir = state_dir.resolve()
    log_dir = state_dir / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    try:
        with local_servers(state_dir) as notes:
            for note in notes:
                click.echo(f"started {note}")
            upgrade_to_head(os.environ["DATABASE_URL"])
            lines = _lines(file, trace_count)
            invalid_input = _run_processes(
                log_dir, concurrency, keep_running, lambda: _ingest(lines, batch_size), signals
            )
    except _Stop as stop:
        click.echo(f"\n{stop}: stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stopped; nothing left running")
    if invalid_input:
        raise ExpectedFailure(invalid_input)
