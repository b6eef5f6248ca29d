"""`tunix-ingest bench --growth` levels it could not measure are usage errors, said before any server starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import worker.cli.bench
from worker.cli.bench import bench


@pytest.mark.parametrize(
    ("levels", "said"),
    [
        ("10000000", "start at 0, the empty table the other levels are compared with: 0,10000000"),
        ("0,5000,3000", "row counts must be 0 or more, in increasing order"),
        ("0,-5", "row counts must be 0 or more, in increasing order"),
        ("0,1e6", "'0,1e6' is not a comma-separated list of row counts"),
    ],
)
def test_growth_levels_that_cannot_be_measured_are_usage_errors(
    levels: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_server(*_: object, **__: object) -> None:
        raise AssertionError("the bench went on to start PostgreSQL")

    monkeypatch.setattr(worker.cli.bench, "PostgresServer", no_server)
    refused = CliRunner().invoke(bench, ["--growth", levels])

    assert refused.exit_code == 2
    assert said in " ".join(refused.output.split())  # click may wrap the line
