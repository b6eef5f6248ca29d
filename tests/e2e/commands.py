"""`tunix-ingest` as a user runs it, from the tests: one subprocess per command, its output captured."""

from __future__ import annotations

import os
import subprocess

from worker.localstack.processes import cli_command


def cli(
    *arguments: str, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `tunix-ingest ARGUMENTS` with the test environment plus `env`; never raises on a non-zero exit."""
    return subprocess.run(
        cli_command(*arguments),
        env={**os.environ, **(env or {})},
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
