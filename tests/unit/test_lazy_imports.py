"""`worker` and `tunix-ingest` import what a caller uses, when it uses it: start-up stays short."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import worker
from worker.cli import COMMANDS, cli


def modules_loaded_by(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {statement}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def test_every_public_name_resolves_to_its_home() -> None:
    assert sorted(worker.__all__) == sorted(worker._HOME_OF)
    for name in worker.__all__:
        assert getattr(worker, name) is getattr(importlib.import_module(worker._HOME_OF[name]), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        worker.nope  # type: ignore[attr-defined]  # noqa: B018


def test_the_consumer_and_follow_leave_the_celery_app_fastapi_and_the_bench_unloaded() -> None:
    loaded = modules_loaded_by("from worker import follow_ingested; import worker.cli.follow")

    assert "worker.client.consumer" in loaded
    assert not loaded & {"worker.edge.app", "fastapi", "worker.cli.bench", "worker.cli.run"}


def test_every_command_is_found_where_the_table_says() -> None:
    context = cli.make_context("tunix-ingest", ["--help"], resilient_parsing=True)
    assert cli.list_commands(context) == list(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert command is not None and command.name == name
    assert cli.get_command(context, "nope") is None
