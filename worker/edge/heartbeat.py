"""Worker heartbeats in Redis, so that custody can tell a dead worker's batches from a slow one's.

Each worker node (its main process, which prefork children inherit the identity of) names itself once,
`<node>#<main pid>#<start time>`, and refreshes `ingest:heartbeat:<that id>` every HEARTBEAT_INTERVAL_S with an
expiry of HEARTBEAT_TTL_S. It beats from a worker bootstep (`Heartbeat`, added to the app by `worker.edge.lifecycle`),
which runs however a worker starts (`celery worker`, a `WorkController` made in code, `start_worker` in tests);
the `worker_ready` signal would not do: only the `celery worker` command sends it.

Receiving an `ingest.batch` message records that id as the owner of its custody record; when the owner's
heartbeat has expired, `reprocess.resend_lost` sends the batch again within seconds instead of waiting for Redis's
visibility timeout (idempotent ingest makes the late redelivery of the same message, when kombu restores it,
harmless).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import bootsteps
from redis.exceptions import RedisError

from worker import keys
from worker.settings import redact

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
#: A worker whose heartbeat is older than this is dead: its in-flight batches are sent again.
HEARTBEAT_TTL_S = 10
_IDENTITY = "TUNIX_INGEST_WORKER_ID"


def current_worker_id() -> str:
    """This worker node's identity, inherited by its pool children; empty outside a worker."""
    return os.environ.get(_IDENTITY, "")


def name_this_worker(sender: Any = None, **_: object) -> None:
    """Only a worker of this app gets an identity: without one, every handler here and in `worker.edge.progress`
    does nothing, so importing `worker` changes nothing for another Celery app's workers."""
    if getattr(getattr(sender, "app", None), "main", None) != keys.APP_NAME:
        return
    node = getattr(sender, "hostname", None) or "worker"
    os.environ[_IDENTITY] = f"{node}#{os.getpid()}#{int(time.time())}"


class _Beater:
    """The thread that keeps one worker's heartbeat key alive while the worker runs."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        worker_id = current_worker_id()
        if not worker_id:  # named on worker_init, which every WorkController sends before its bootsteps start
            log.warning("this worker has no identity: it writes no heartbeat")
            return
        self.stopped.clear()
        self.thread = threading.Thread(target=self._beat, args=(worker_id,), name="tunix-heartbeat", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _beat(self, worker_id: str) -> None:
        from worker.redis_connect import shared_client  # the producer's client: one pool per process

        client = shared_client()
        while not self.stopped.is_set():
            try:
                client.set(keys.heartbeat_key(worker_id), int(time.time()), ex=HEARTBEAT_TTL_S)
            except RedisError as error:  # Redis away: the heartbeat expires, which only causes a harmless re-send
                log.warning("heartbeat not written: %s", redact(str(error)))
            self.stopped.wait(HEARTBEAT_INTERVAL_S)


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # celery has no type hints
    """Beats from the moment the worker's pool is up until the worker has shut down. Consumption starts after it
    (the consumer is the last step), so a batch is never owned by a worker that does not beat yet."""

    label = "tunix heartbeat"
    requires = ("celery.worker.components:Pool",)

    def create(self, parent: Any) -> _Beater:
        beater = _Beater()
        parent.tunix_heartbeat = beater  # for the worker_shutdown signal, which stops it
        return beater

    def stop(self, parent: Any) -> None:
        """Not yet: steps stop in reverse, so the pool stops after this one and lets running tasks finish,
        which must not look dead meanwhile. The beat ends with the worker_shutdown signal (or a cold stop)."""


def own_received_batch(request: Any = None, **_: object) -> None:
    """In the worker's main process, as a message is reserved (before a pool process starts it)."""
    worker_id = current_worker_id()
    if request is None or request.name != keys.INGEST_TASK or not worker_id:
        return
    from worker.custody import records as custody
    from worker.redis_connect import shared_client

    try:
        custody.received_by(shared_client(), custody.record_of(request.kwargs), worker_id)
    except RedisError as error:  # the record then waits for the slower recovery paths; nothing is lost
        log.warning("could not note the received batch's owner: %s", redact(str(error)))


def stop_beating(sender: Any = None, **_: object) -> None:
    """A clean stop: running tasks have finished and kombu has put reserved messages back, so this worker
    holds nothing any more; forgetting its entries spares them a needless re-send when its heartbeat expires."""
    beater = getattr(sender, "tunix_heartbeat", None)
    if isinstance(beater, _Beater):
        beater.stop()
    worker_id = current_worker_id()
    if not worker_id:
        return
    from worker.custody import records as custody
    from worker.redis_connect import shared_client

    try:
        custody.forget_owner(shared_client(), worker_id)
    except RedisError as error:
        log.warning("could not forget this worker's custody entries: %s", redact(str(error)))
