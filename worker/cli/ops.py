"""Operator commands: migrate the schema and report ingest statistics."""

from __future__ import annotations

import json
import time

import click

from worker.cli.common import expected_failures, json_ready
from worker.cli.migrate import upgrade_to_head
from worker.monitoring.store_figures import collect_stats
from worker.settings import get_settings, redact


@click.command()
@expected_failures
def migrate() -> None:
    """Apply database migrations (`alembic upgrade head`)."""
    url = get_settings().database_url.get_secret_value()
    upgrade_to_head(url)
    click.echo(f"database at {redact(url)} is at the newest schema")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@expected_failures
def stats(as_json: bool) -> None:
    """Traces stored, batches by state, queue depth, unpublished batches, oldest waiting message age, batches
    in transit (accepted, not in PostgreSQL yet) and lost batches sent again."""
    figures = collect_stats()
    if as_json:
        click.echo(json.dumps(json_ready(figures)))
        return
    for name, value in figures.model_dump().items():
        if isinstance(value, dict):
            for key, count in value.items():
                click.echo(f"{name + '.' + key:>28}  {count}")
        else:
            click.echo(f"{name:>28}  {value if value is not None else '-'}")


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--redis-memory-budget",
    type=click.IntRange(min=1),
    default=None,
    help="Bytes of Redis memory to alert against [default: Redis maxmemory if set, else 4.5 GB].",
)
def metrics(port: int, address: str, redis_memory_budget: int | None) -> None:
    """Serve ingest metrics for Prometheus at http://ADDRESS:PORT/metrics until interrupted."""
    from prometheus_client import REGISTRY, start_http_server

    from worker.monitoring.collector import IngestCollector

    REGISTRY.register(IngestCollector(redis_memory_budget))
    start_http_server(port, addr=address)
    click.echo(f"serving ingest metrics on http://{address}:{port}/metrics")
    while True:
        time.sleep(3600)
