"""`tunix-ingest`: the command line of PRODUCT.md §7. Exit 0 on success, 1 with a one-line reason otherwise."""

from __future__ import annotations

import sys

import click

from worker.cli.batches import enqueue, redrive, status
from worker.cli.bench import bench
from worker.cli.common import ExpectedFailure
from worker.cli.follow import follow
from worker.cli.ops import metrics, migrate, stats
from worker.cli.run import run
from worker.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Ingest LLM reasoning traces: enqueue batches, watch them land in PostgreSQL, operate the workers.

    Configuration comes from the environment (DATABASE_URL, REDIS_URL, INGEST_*); see docs/operations.md.
    """


for command in (run, serve, enqueue, status, redrive, migrate, stats, metrics, bench, follow):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point: expected failures print one line on stderr, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as usage:
        usage.show()
        sys.exit(usage.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ExpectedFailure as failure:
        click.echo(f"error: {failure}", err=True)
        sys.exit(1)
