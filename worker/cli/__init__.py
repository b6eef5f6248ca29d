"""`tunix-ingest`: the command line of PRODUCT.md §7. Exit 0 on success, 1 with a one-line reason otherwise."""

from __future__ import annotations

import importlib
import sys

import click

from worker.cli.common import ExpectedFailure

#: Each command and where it lives, imported only when it runs (or `--help` lists it): `follow` or `status`
#: need not load the Celery app, FastAPI and the bench first.
COMMANDS = {
    "run": "worker.cli.run",
    "serve": "worker.cli.serve",
    "enqueue": "worker.cli.batches",
    "status": "worker.cli.batches",
    "redrive": "worker.cli.batches",
    "migrate": "worker.cli.ops",
    "stats": "worker.cli.ops",
    "metrics": "worker.cli.ops",
    "bench": "worker.cli.bench",
    "follow": "worker.cli.follow",
    "export": "worker.cli.export",
    "probe": "worker.cli.probe",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = getattr(importlib.import_module(module), cmd_name)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Ingest LLM reasoning traces: enqueue batches, watch them land in PostgreSQL, operate the workers.

    Configuration comes from the environment (DATABASE_URL, REDIS_URL, INGEST_*); see docs/operations.md.
    """


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
