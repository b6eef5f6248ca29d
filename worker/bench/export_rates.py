"""The export figures (PRODUCT.md §6c, §9): `tunix-ingest export --all` of everything stored, to Parquet and to
JSON Lines, as users run it, beside the SELECT ceiling that `follow_rates` measures. Reads PostgreSQL only."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from worker.localstack.processes import cli_command

_SUMMARY = re.compile(
    rb"exported ([\d,]+) traces? \(([\d,]+) batch(?:es)?\) to ([\d,]+) files?, ([\d.,]+) MiB, "
    rb"in ([\d.]+) s: ([\d,]+) traces/s"
)
FORMATS = ("parquet", "jsonl")


def export_rate(work_dir: Path, form: str) -> dict[str, float]:
    """One export of everything into a new directory. The rate is the one the command prints: from connecting to
    the manifest written; `wall_s` is the whole command, with the interpreter's start-up."""
    out = work_dir / f"export-{form}"
    started = time.perf_counter()
    done = subprocess.run(
        cli_command("export", str(out), "--all", "--format", form), capture_output=True, timeout=3600, check=False
    )
    wall = time.perf_counter() - started
    summary = _SUMMARY.search(done.stderr)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"export failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    traces, seconds, rate = int(summary[1].replace(b",", b"")), float(summary[5]), float(summary[6].replace(b",", b""))
    if traces == 0 or rate <= 0:
        raise RuntimeError(f"export wrote nothing: {summary[0].decode()}")
    return {
        "rate": rate,
        "seconds": seconds,
        "wall_s": wall,
        "traces": traces,
        "files": int(summary[3].replace(b",", b"")),
        "mib": float(summary[4].replace(b",", b"")),
    }


def export_rates(work_dir: Path, select_rate: float) -> dict[str, Any]:
    """Both formats, each with its ratio to the SELECT ceiling."""
    figures: dict[str, Any] = {}
    for form in FORMATS:
        figures[form] = export_rate(work_dir, form)
        figures[form]["ratio"] = figures[form]["rate"] / select_rate
    return figures


def export_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench table's rows for the export figures."""
    return [
        (
            f"export to {label} (--all)",
            f"{done['rate']:,.0f} traces/s ({done['mib']:,.0f} MiB in {done['files']} files, {done['seconds']:.1f} s; "
            f"the command {done['wall_s']:.1f} s); / SELECT ceiling {done['ratio']:.2f}",
        )
        for label, done in (("Parquet", figures["export"]["parquet"]), ("JSON Lines", figures["export"]["jsonl"]))
    ]
