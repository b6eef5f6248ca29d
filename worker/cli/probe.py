"""`tunix-ingest probe worker`: the liveness check an orchestrator runs against one worker node.

It fails (exit 1, one line on stderr) when the node's heartbeat is gone, or when batches have waited in its queue
longer than `--stall-after` and the node has neither taken nor finished a task for that long: the worker that
stays up after a Redis reconnect or failover and consumes nothing (worker.edge.progress). An idle node passes, and
so does a node that is busy: every task ends within the task time limit, so the default bound lies above it.
When Redis itself cannot be reached the probe passes and says so: restarting workers would not bring Redis back,
and they reconnect by themselves once it is.
"""

from __future__ import annotations

import time

import click
from celery.utils.nodenames import host_format
from redis.exceptions import RedisError

from worker.cli.common import expected_failures
from worker.monitoring.liveness import judge_node
from worker.settings import get_settings, redact

#: Above the task time limit: a node whose every pool process runs a long batch still ends one within it.
STALL_MARGIN_S = 30.0


@click.group()
def probe() -> None:
    """Liveness checks for orchestrators: exit 0 when healthy, 1 with a one-line reason when not."""


@probe.command("worker")
@click.option(
    "--node",
    default="celery@%h",
    show_default=True,
    help="The node name given to `celery worker -n`; %h, %n and %d expand as they do there.",
)
@click.option(
    "--stall-after",
    type=click.FloatRange(min=1),
    default=None,
    help=f"Seconds without progress while batches wait [default: TASK_TIME_LIMIT_S + {STALL_MARGIN_S:.0f}].",
)
@click.option("--queue", default=None, help="The queue the node consumes [default: INGEST_QUEUE].")
@expected_failures
def worker_probe(node: str, stall_after: float | None, queue: str | None) -> None:
    """Fail when the worker node's heartbeat is gone, or when work waits and the node makes no progress."""
    from worker.redis_connect import connect

    settings = get_settings()
    node = host_format(node)
    bound = stall_after if stall_after is not None else settings.task_time_limit_s + STALL_MARGIN_S
    try:
        # Short timeouts: an orchestrator kills a probe that hangs, and counts that as a failure.
        with connect(socket_connect_timeout=2, socket_timeout=3) as redis:
            queue = queue or settings.ingest_queue
            verdict = judge_node(redis, node, queue=queue, stall_after_s=bound, now=time.time())
    except RedisError as error:
        click.echo(f"{node}: not judged, Redis unreachable ({redact(str(error))})", err=True)
        return
    if not verdict.healthy:
        click.echo(f"unhealthy: {verdict.reason}", err=True)
        raise SystemExit(1)
    click.echo(verdict.reason)
