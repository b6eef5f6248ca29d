"""`tunix-ingest probe worker`: the liveness check an orchestrator runs against one worker node.

It fails (exit 1, one line on stderr) when the node's heartbeat is gone, or when batches have waited in its queue
longer than `--stall-after` and the node has neither taken nor finished a task for that long: the worker that
stays up after a Redis reconnect or failover and consumes nothing (worker.progress). An idle node passes, and
so does a node that is busy: every task ends within the task time limit, so the default bound lies above it.
When Redis itself cannot be reached the probe passes and says so: restarting workers would not bring Redis back,
and they reconnect by themselves once it is.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import click
from celery.utils.nodenames import host_format
from redis import Redis
from redis.exceptions import RedisError

from worker.cli.common import expected_failures
from worker.cli.stats import oldest_waiting_age
from worker.cli.worker_nodes import node_processes
from worker.settings import get_settings, redact

#: Above the task time limit: a node whose every pool process runs a long batch still ends one within it.
STALL_MARGIN_S = 30.0


class Verdict(NamedTuple):
    healthy: bool
    reason: str


def judge_node(redis: Redis, node: str, *, queue: str, stall_after_s: float, now: float) -> Verdict:
    """Whether `node` is alive and consuming, with the one line that says why (or why not)."""
    processes = node_processes(redis, node)
    alive = [process for process in processes if process.alive]
    if not alive:
        seen = "never seen" if not processes else "its heartbeat expired"
        return Verdict(False, f"{node}: no worker heartbeat in Redis ({seen}): the worker is gone or cut off")
    silent_for = now - max(process.progress_at for process in alive)
    depth = int(redis.llen(queue))
    if depth == 0:
        return Verdict(True, f"{node}: alive, queue {queue!r} empty (last progress {silent_for:.0f} s ago)")
    # A message whose enqueue time cannot be read counts as old: the node's silence alone then decides.
    waited = oldest_waiting_age(redis, queue)
    waited_s = float("inf") if waited is None else waited
    if waited_s >= stall_after_s and silent_for >= stall_after_s:
        return Verdict(
            False,
            f"{node}: {depth} batches queued in {queue!r} (oldest waiting {waited_s:.0f} s) and no task taken or "
            f"finished for {silent_for:.0f} s (limit {stall_after_s:.0f} s): the worker is stuck",
        )
    return Verdict(True, f"{node}: alive, {depth} queued, last progress {silent_for:.0f} s ago")


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
