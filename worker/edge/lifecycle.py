"""What runs when a worker starts and stops: every Celery signal handler of tunix-rt ingest, connected here in
the order it runs, and the installers that patch kombu and Flower. `worker.edge.app` calls `install` once.

Handlers act only in a worker of this app: `heartbeat.name_this_worker` names a worker of this app alone, and
every other handler runs only where a name is (pool processes inherit it). Importing `worker` (a producer does)
changes nothing for another Celery app's workers in the same process."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.utils.dispatch import Signal

from worker.edge import flower_guard, heap, heartbeat, progress, redis_policy, transports
from worker.redis_connect import refuse_unusable_url_in_celery_commands


def _start_runtime(**_: object) -> None:
    from worker.edge import runtime  # late: SQLAlchemy and the services load in worker processes only

    runtime.start_in_process()


def _stop_runtime(**_: object) -> None:
    from worker.edge import runtime

    runtime.stop_in_process()


#: (signal, handler) in the order each signal calls them.
HANDLERS: tuple[tuple[Signal, Callable[..., Any]], ...] = (
    # The main process starts: name it first (every other handler needs the name), then refuse a Redis that
    # could lose custody's bodies, then register the node for the probe and the metrics.
    (signals.worker_init, heartbeat.name_this_worker),
    (signals.worker_init, redis_policy.refuse_unsafe_redis),
    (signals.worker_init, progress.register_node),
    # Each pool process: its event loop, engine and Redis client, after the fork.
    (signals.worker_process_init, _start_runtime),
    # A message is reserved (main process): custody records its owner; the probe sees progress.
    (signals.task_received, heartbeat.own_received_batch),
    (signals.task_received, progress.mark_progress),
    # A task ended (pool process): progress, then hand freed memory back now and then. (A batch's outcome is counted
    # by its delivery, with its custody release: worker.edge.delivery.)
    (signals.task_postrun, progress.mark_progress),
    (signals.task_postrun, heap.return_freed_memory),
    # Stopping: the pool processes' runtimes, then (main process) leave the registry, stop the heartbeat and
    # forget custody's owner entries, and close the main process's runtime (the solo pool's).
    (signals.worker_process_shutdown, _stop_runtime),
    (signals.worker_shutdown, progress.unregister_node),
    (signals.worker_shutdown, heartbeat.stop_beating),
    (signals.worker_shutdown, _stop_runtime),
)


def in_this_apps_worker(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler`, run only in a process of a worker this app named."""
    if handler is heartbeat.name_this_worker:  # it decides, from the worker's app, whether to name it
        return handler

    @functools.wraps(handler)
    def guarded(**kwargs: Any) -> None:
        if heartbeat.current_worker_id():
            handler(**kwargs)

    return guarded


def connect_signal_handlers() -> None:
    """Connect every handler once (a dispatch uid per handler: calling this again changes nothing).
    weak=False: a handler lives as long as the worker, whoever holds a reference to it."""
    for signal, handler in HANDLERS:
        uid = f"tunix-ingest:{handler.__module__}.{handler.__name__}"
        signal.connect(in_this_apps_worker(handler), weak=False, dispatch_uid=uid)


def install(app: Celery) -> None:
    """Everything a process that loads the app needs: the patches (Flower's loopback guard, kombu's Redis
    transports for Sentinel in pool processes), the refusal of unusable Redis URLs in `celery` commands, the
    heartbeat bootstep (so every way of starting a worker beats, not only the `celery worker` command) and
    the signal handlers."""
    flower_guard.install()
    transports.install_in_worker_processes()
    refuse_unusable_url_in_celery_commands()
    app.steps["worker"].add(heartbeat.Heartbeat)
    connect_signal_handlers()
