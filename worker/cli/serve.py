"""`tunix-ingest serve`: the HTTP enqueue API (PRODUCT.md §4b) under uvicorn."""

from __future__ import annotations

import click
import uvicorn

from worker.cli.common import ExpectedFailure
from worker.edge.flower_guard import is_loopback
from worker.http_api.auth import api_tokens


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="uvicorn processes.")
def serve(host: str, port: int, workers: int) -> None:
    """Serve the HTTP enqueue API: POST /api/traces/batch (the tunix-rt backend's endpoint), /api/traces/jsonl,
    GET /api/batches/{id}, /healthz, /readyz; OpenAPI docs at /docs.

    Every /api call needs a bearer token from INGEST_API_TOKENS. Without tokens it listens on loopback only,
    and answers /api there only with INGEST_API_ALLOW_ANONYMOUS=1 (a development server; a warning is logged).
    """
    # Anonymous access never extends beyond loopback, opt-in or not: it is for a server on the developer's host.
    if not is_loopback(host) and not api_tokens():
        raise ExpectedFailure(
            f"refusing to serve the API on {host} without authentication: set INGEST_API_TOKENS=token[,token…] "
            "or listen on 127.0.0.1"
        )
    uvicorn.run("worker.http_api:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")
