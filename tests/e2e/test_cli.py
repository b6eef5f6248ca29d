"""`tunix-ingest` as a user runs it: real processes, real servers, exit codes and messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.db import query, scalar
from tests.e2e.commands import cli
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from worker.localstack.processes import cli_command
from worker.localstack.sample_traces import generate_traces


def line(trace: dict[str, Any] | Any) -> bytes:
    return json.dumps(trace).encode()


def bad_input_corpus() -> tuple[bytes, dict[int, str], int]:
    """JSONL with valid traces around every kind of bad line of PRODUCT.md §8.7; the expected reason by line."""
    good = list(generate_traces(6))
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"d": deep}
    cases: list[tuple[bytes, str | None]] = [
        (line(good[0]), None),
        (b"{this is not json", "not valid JSON"),
        (b'{"prompt": "caf\xe9"}', "not valid UTF-8"),
        (line({k: v for k, v in good[1].items() if k != "final_answer"}), "final_answer: Field required"),
        (line({**good[1], "answer": "typo"}), "answer: Extra inputs are not permitted"),
        (line({**good[1], "prompt": "", "final_answer": ""}), "prompt: String should have at least 1 character"),
        (line({**good[1], "prompt": 7}), "prompt: Input should be a valid string"),
        (line({**good[1], "steps": [{"i": 0, "type": "a", "content": "x"}] * 2}), "duplicate step index"),
        (line({**good[1], "steps": [{"i": -3, "type": "a", "content": "x"}]}), "steps[0].i: Input should be greater"),
        (line({**good[1], "final_answer": "a\u0000b"}), "final_answer: contains a NUL character"),
        (
            b'{"trace_version": "1", "prompt": "\\ud800", "final_answer": "x", "steps": [{"i": 0, "type": "a", '
            b'"content": "x"}]}',
            "prompt: contains a lone surrogate",
        ),
        (line({**good[1], "meta": deep}), "meta: nesting is deeper than 32"),
        (line({**good[1], "prompt": "x" * 50_001}), "prompt: String should have at most 50000 characters"),
        (b"[1, 2, 3]", "must be a JSON object"),
        *((line(trace), None) for trace in good[2:]),
    ]
    body = b"\n".join(raw for raw, _ in cases) + b"\n"
    expected = {number: reason for number, (_, reason) in enumerate(cases, start=1) if reason}
    return body, expected, sum(1 for _, reason in cases if reason is None)


def test_enqueue_reports_every_bad_line_by_number_and_stores_every_good_one(
    worker_process: WorkerProcess, database_url: str, tmp_path: Path
) -> None:
    body, expected, valid = bad_input_corpus()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(body)

    done = cli("enqueue", str(corpus), "--wait", "--batch-size", "4", "--source", "corpus")

    assert done.returncode == 1
    # Lines are counted, problems listed: one line has two (an empty prompt and an empty answer).
    assert (
        f"{len(expected)} of {len(expected) + valid} lines were invalid and not enqueued ({len(expected) + 1} problems)"
        in done.stderr
    )
    for number, reason in expected.items():
        reported = [text for text in done.stderr.splitlines() if text.startswith(f"line {number}:")]
        assert any(reason in text for text in reported), (number, reason, done.stderr)
    assert f"stored {valid} traces" in done.stdout
    assert scalar(database_url, "SELECT count(*) FROM trace") == valid
    assert "Traceback" not in done.stderr


def test_run_with_a_file_reports_bad_lines_like_enqueue_and_stores_every_good_one(
    database_url: str, tmp_path: Path
) -> None:
    body, expected, valid = bad_input_corpus()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(body)

    done = cli("run", "--file", str(corpus), "--exit-after-ingest", "--state-dir", str(tmp_path / "state"))

    assert done.returncode == 1 and "Traceback" not in done.stderr
    for number, reason in expected.items():
        reported = [text for text in done.stderr.splitlines() if text.startswith(f"line {number}:")]
        assert any(reason in text for text in reported), (number, reason, done.stderr)
    assert f"stored {valid} traces" in done.stdout and "stopped; nothing left running" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {len(expected)} of {len(expected) + valid} lines")
    assert scalar(database_url, "SELECT count(*) FROM trace") == valid


def test_enqueue_splits_batches_over_the_byte_limit_and_reads_stdin(
    worker_process: WorkerProcess, database_url: str
) -> None:
    traces = b"\n".join(line(t) for t in generate_traces(40, padding=200))
    done = cli("enqueue", "-", "--wait", "--batch-size", "40", env={"INGEST_MAX_BATCH_BYTES": "20000"}, stdin=traces)
    assert done.returncode == 0, done.stderr
    assert "stored 40 traces" in done.stdout
    assert scalar(database_url, "SELECT count(*) FROM batch") > 1


def test_enqueue_of_an_empty_file_fails_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    done = cli("enqueue", str(empty))
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: no traces in {empty}"


def test_status_stats_redrive_and_migrate_answer_with_meaningful_exit_codes(
    worker_process: WorkerProcess, database_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "three.jsonl"
    data.write_bytes(b"\n".join(line(t) for t in generate_traces(3)))
    assert cli("enqueue", str(data), "--wait").returncode == 0
    (batch_id,) = (str(row.id) for row in query(database_url, "SELECT id FROM batch"))

    status = cli("status", batch_id)
    as_json = json.loads(cli("status", batch_id, "--json").stdout)
    stats = json.loads(cli("stats", "--json").stdout)
    unknown = cli("status", "00000000-0000-0000-0000-000000000000")

    assert status.returncode == 0 and "ingested" in status.stdout
    assert as_json["stored_traces"] == 3 and as_json["published_at"]
    assert stats["traces_stored"] == 3 and stats["batches_by_state"]["ingested"] == 1 and stats["queue_depth"] == 0
    assert stats["batches_in_transit"] == 0 and stats["lost_batches_resent"] == 0
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: no batch")
    assert "traces_stored" in cli("stats").stdout
    assert cli("redrive", "--all").stdout.strip() == "re-drove 0 of 0 batches"
    assert cli("redrive").returncode == 2
    assert cli("redrive", "--batch", batch_id).returncode == 1
    assert cli("migrate").returncode == 0


def test_a_reader_that_leaves_early_ends_the_output_quietly() -> None:
    """`tunix-ingest stats | head -1`: once the reader has gone, the command's writes fail with EPIPE. That is
    the end of its output, not a database failure: no message, no traceback, exit 1 (click's EPIPE handling)."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader left before the first line
    try:
        done = subprocess.run(
            cli_command("stats"), stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120, env=os.environ
        )
    finally:
        os.close(writer)

    assert (done.returncode, done.stderr) == (1, "")


def _processes_under(path: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [row for row in listing.splitlines() if str(path) in row]


def test_run_on_throwaway_servers_ingests_a_sample_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    state = tmp_path / "state"
    done = subprocess.run(
        cli_command("run", "--traces", "1500", "--exit-after-ingest", "--state-dir", str(state)),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored 1500 traces in 3 batches, rejected 0" in done.stdout
    assert "Flower: http://127.0.0.1:" in done.stdout and "HTTP API: http://127.0.0.1:" in done.stdout
    assert _processes_under(state) == []
    assert not (state / "postgres").exists() and not (state / "redis").exists()


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (worker, beat, Flower and the API start their own process groups)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.mark.parametrize("presses", [1, 2])
def test_run_stops_everything_on_ctrl_c_pressed_once_or_twice(tmp_path: Path, presses: int) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    state = tmp_path / "state"
    log = tmp_path / "run.log"
    with log.open("w") as output:
        running = subprocess.Popen(
            cli_command("run", "--traces", "200", "--state-dir", str(state)),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "press Ctrl-C" in log.read_text(), timeout=120, what="run to finish its sample")
        started = _descendants(running.pid)
        assert len(started) >= 4  # worker, beat, Flower, the API (and the servers, and pool children)
        running.send_signal(signal.SIGINT)
        if presses == 2:  # impatient: again while the first is still stopping the processes
            time.sleep(0.5)
            running.send_signal(signal.SIGINT)
        assert running.wait(90) == 0
    finally:
        if running.poll() is None:
            running.kill()
    assert "stopped; nothing left running" in log.read_text()
    assert _processes_under(state) == []
    wait_for(lambda: not _alive(started), timeout=15, what="every process run started to be gone")
