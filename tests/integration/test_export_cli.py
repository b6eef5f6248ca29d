"""`tunix-ingest export` as a user runs it (a subprocess): a summary line, a progress bar only on a terminal,
and exit codes: 0 done, 1 a one-line reason, 2 usage, 75 another export holds the directory."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.commands import cli
from tests.exports import exported_rows, store
from worker.export.dataset_dir import DatasetDirectory
from worker.localstack.processes import cli_command
from worker.localstack.sample_traces import generate_traces

SUMMARY = re.compile(
    r"exported ([\d,]+) traces? \(([\d,]+) batch(?:es)?\) to (\d+) files?, [\d.,]+ MiB, in [\d.]+ s: "
    r"[\d,]+ traces/s; run (\d+)"
)


async def test_export_and_resume_print_one_summary_line_each(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    await store(sessions, list(generate_traces(3)), source="a")
    await store(sessions, list(generate_traces(2)), source="b")

    first = await asyncio.to_thread(cli, "export", out, "--source", "a", "--source", "b")
    await store(sessions, list(generate_traces(4)), source="a")
    await store(sessions, list(generate_traces(1)), source="c")
    second = await asyncio.to_thread(cli, "export", "--resume", out)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert [SUMMARY.search(done.stderr).groups() for done in (first, second)] == [  # type: ignore[union-attr]
        ("5", "2", "2", "1"),
        ("4", "1", "1", "2"),  # the manifest's filters: source c stays out
    ]
    assert first.stdout == second.stdout == "" and "\x1b" not in first.stderr  # no progress bar off a terminal
    assert len(exported_rows(tmp_path / "out")) == 9


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    for arguments, reason in [
        (("export", out), "choose what to export"),
        (("export", out, "--all", "--source", "a"), "not both"),
        (("export", "--resume", str(tmp_path), "--source", "a"), "keeps the filters of its manifest"),
        (("export", "--all"), "name the export directory"),
        (("export", out, "--all", "--since", "yesterday"), "not an ISO 8601 date"),
    ]:
        done = await asyncio.to_thread(cli, *arguments)
        assert done.returncode == 2 and reason in done.stderr, (arguments, done.stderr)


async def test_refusals_are_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not an export")
    done = await asyncio.to_thread(cli, "export", str(tmp_path), "--all")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not empty and holds no export (found 'mine.txt')"
    ]


async def test_a_directory_held_by_another_export_exits_75(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await store(sessions, list(generate_traces(1)))
    with DatasetDirectory(tmp_path / "out").locked():
        done = await asyncio.to_thread(cli, "export", str(tmp_path / "out"), "--all")

    assert done.returncode == 75 and "another export is writing to" in done.stderr
    assert not list((tmp_path / "out").glob("__manifests__/*"))


def _run_on_a_terminal(*arguments: str) -> tuple[int, str]:
    """Run `tunix-ingest ARGUMENTS` with stderr on a pseudo-terminal; its exit code and what the terminal got."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(cli_command(*arguments), stderr=terminal, stdout=subprocess.DEVNULL, timeout=120)
        os.close(terminal)
        received = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(controller)
    return done.returncode, received.decode(errors="replace")


async def test_a_progress_bar_is_drawn_on_a_terminal(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await store(sessions, list(generate_traces(50)))
    returncode, screen = await asyncio.to_thread(_run_on_a_terminal, "export", str(tmp_path / "out"), "--all")

    assert returncode == 0, screen
    assert "exporting traces" in screen and "50/50" in screen
    assert "exported 50 traces" in screen
