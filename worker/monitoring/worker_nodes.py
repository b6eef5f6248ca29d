"""Worker nodes as Redis sees them (their heartbeat and last progress), for `probe worker` and `metrics`."""

from __future__ import annotations

import re
from typing import NamedTuple

from redis import Redis

from worker import keys
from worker.edge.progress import node_of, started_at
from worker.keys import HEARTBEAT as HEARTBEAT_PREFIX
from worker.keys import NODES, heartbeat_key, progress_key

#: A node down this long is forgotten: its alert has had time to fire, and names must not pile up forever
#: (Kubernetes gives each replaced pod a new one).
FORGET_AFTER_S = 3600.0


class NodeState(NamedTuple):
    node: str
    worker_id: str
    #: Its heartbeat key exists (refreshed every 2 s, gone 10 s after the last beat).
    alive: bool
    heartbeat_at: float | None
    #: Its last progress mark, or its start time if it has none yet: "no progress since".
    progress_at: float


def text_of(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _states(redis: Redis, worker_ids: list[str]) -> list[NodeState]:
    with redis.pipeline(transaction=False) as pipe:
        for worker_id in worker_ids:
            pipe.get(heartbeat_key(worker_id))
            pipe.get(progress_key(worker_id))
        answers = pipe.execute()
    states = []
    for worker_id, beat, mark in zip(worker_ids, answers[::2], answers[1::2], strict=True):
        progress_at = max(float(mark) if mark else 0.0, started_at(worker_id))
        heartbeat_at = float(beat) if beat else None
        states.append(NodeState(node_of(worker_id), worker_id, beat is not None, heartbeat_at, progress_at))
    return states


def node_processes(redis: Redis, node: str) -> list[NodeState]:
    """The worker processes that run (or last ran) under `node`: the registered one and any other whose
    heartbeat is alive (a node the registry missed because Redis was away when it started)."""
    registered = redis.hget(NODES, node)
    worker_ids = [text_of(registered)] if registered else []
    if not worker_ids or not redis.exists(heartbeat_key(worker_ids[0])):
        # Only when the registry has no live answer: a SCAN walks the whole keyspace.
        pattern = f"{HEARTBEAT_PREFIX}:{_glob_escape(node)}#*"
        beating = [text_of(key)[len(HEARTBEAT_PREFIX) + 1 :] for key in redis.scan_iter(match=pattern, count=1000)]
        worker_ids = sorted(set(worker_ids) | set(beating))
    return _states(redis, worker_ids)


def survey_nodes(redis: Redis, now: float) -> list[NodeState]:
    """Every registered node's state. Notes when a node was first seen down and forgets nodes down for longer
    than FORGET_AFTER_S (the only writes a metrics scrape makes)."""
    registry = {text_of(key): text_of(value) for key, value in redis.hgetall(NODES).items()}
    states = _states(redis, list(registry.values()))
    down_since = {text_of(key): float(value) for key, value in redis.hgetall(keys.NODES_DOWN_SINCE).items()}
    with redis.pipeline(transaction=False) as pipe:
        for state in states:
            if state.alive:
                if state.node in down_since:
                    pipe.hdel(keys.NODES_DOWN_SINCE, state.node)
            elif state.node not in down_since:
                pipe.hsetnx(keys.NODES_DOWN_SINCE, state.node, f"{now:.3f}")
            elif now - down_since[state.node] > FORGET_AFTER_S:
                pipe.hdel(keys.NODES_DOWN_SINCE, state.node)
                pipe.hdel(NODES, state.node)
        for node in set(down_since) - set(registry):  # left cleanly while it was down
            pipe.hdel(keys.NODES_DOWN_SINCE, node)
        pipe.execute()
    return [state for state in states if state.alive or now - down_since.get(state.node, now) <= FORGET_AFTER_S]
