"""Whether a worker node is alive and consuming (`tunix-ingest probe worker`): its heartbeat, and its progress
while batches wait in its queue (worker.edge.progress)."""

from __future__ import annotations

from typing import NamedTuple

from redis import Redis

from worker.monitoring.store_figures import oldest_waiting_age
from worker.monitoring.worker_nodes import node_processes


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
