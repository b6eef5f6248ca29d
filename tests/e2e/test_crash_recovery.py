"""§8.1–8.3: worker processes, PostgreSQL and Redis die mid-ingest; every accepted trace is stored once."""

from __future__ import annotations

import os
import signal
import time
from typing import cast

import orjson
import pytest
import redis
from celery.result import AsyncResult

from tests.db import hold_the_batch_table, published_batches, query, release_the_batch_table, scalar
from tests.e2e.conftest import FAST_RECOVERY, FAST_SCHEDULE, StartBeat, StartWorker
from tests.e2e.pipeline_state import describe_pipeline
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from tests.streams import events_by_batch
from worker import app, enqueue_batch, keys
from worker.custody import records as custody
from worker.localstack.sample_traces import generate_traces
from worker.localstack.servers import PostgresServer, RedisServer


def enqueue_backlog(traces: int, batch_size: int, *, seed: int = 42) -> list[str]:
    generated = list(generate_traces(traces, seed=seed, padding=30))
    return [
        str(enqueue_batch(generated[start : start + batch_size], source="crash-test").batch_id)
        for start in range(0, traces, batch_size)
    ]


def nothing_in_flight(redis_url: str) -> bool:
    """No batch waiting in the queue and none delivered but unacknowledged (kombu's `unacked` hash)."""
    client = redis.Redis.from_url(redis_url)
    return client.llen("ingest") == 0 and client.hlen("unacked") == 0


def wait_until_every_batch_stored(
    database_url: str, redis_url: str, batch_ids: list[str], *workers: WorkerProcess, what: str = "every batch stored"
) -> None:
    wait_for(
        lambda: published_batches(database_url) == len(batch_ids),
        timeout=120,
        what=what,
        explain=lambda: describe_pipeline(database_url, redis_url, *workers),
    )


def assert_stored_exactly_once(database_url: str, redis_url: str, batch_ids: list[str], traces: int) -> None:
    assert scalar(database_url, "SELECT count(*) FROM trace") == traces
    assert scalar(database_url, "SELECT count(DISTINCT (batch_id, position)) FROM trace") == traces
    assert scalar(database_url, "SELECT count(*) FROM batch WHERE state = 'ingested'") == len(batch_ids)
    announced = events_by_batch(redis_url)
    assert set(announced) == set(batch_ids)  # at least once each (a crash may repeat one)


def batches_held_by(redis_url: str, node: str) -> list[str]:
    """Batch ids of the custody records whose delivery the worker node `node` had started and still holds (a
    message its parent put back in the queue after a pool child died waits there for the drain, not for it)."""
    client = redis.Redis.from_url(redis_url)
    owners = cast(dict[bytes, bytes], client.hgetall(keys.CUSTODY_OWNERS))
    started = {
        record
        for record, _ in cast(list[tuple[bytes, float]], client.zrange(keys.CUSTODY_TAKEN, 0, -1, withscores=True))
    }
    held = [
        record.decode()
        for record, owner in owners.items()
        if owner.decode().startswith(f"{node}@") and record in started
    ]
    tickets = [cast(bytes | None, client.get(keys.custody_ticket_key(record))) for record in held]
    return [orjson.loads(ticket)["batch_id"] for ticket in tickets if ticket]


_STORED = "SELECT id::text FROM batch WHERE state = 'ingested' AND id::text = ANY(:ids)"


def frozen_holding_a_batch(worker: WorkerProcess, redis_url: str, database_url: str) -> list[str]:
    """Freeze the worker and return the batches it holds that PostgreSQL has not stored yet; thaw it again if it
    holds none. Killing it while it is frozen holding some makes it die mid-batch, wherever the drain's timing
    falls (between two batches a node can hold none, and a batch just committed is held until its release)."""
    worker.freeze()
    try:
        held = batches_held_by(redis_url, worker.name)
        stored = {row[0] for row in query(database_url, _STORED, ids=held)} if held else set()
    except BaseException:
        worker.thaw()
        raise
    unstored = [batch_id for batch_id in held if batch_id not in stored]
    if not unstored:
        worker.thaw()
    return unstored


def test_sigkill_of_pool_children_and_of_the_whole_worker_loses_and_duplicates_nothing(
    start_worker: StartWorker, start_beat: StartBeat, database_url: str, redis_url: str
) -> None:
    # The visibility timeout above the 30 s bound: the batches the dead host was running must come back through
    # heartbeats and custody, not through Redis's redelivery. (A message the host had popped but not yet noted
    # as received has no owner; it comes back through the visibility timeout, as before.)
    env = {**FAST_RECOVERY, "VISIBILITY_TIMEOUT_S": "40"}
    batch_ids = enqueue_backlog(10_000, 500)
    start_beat({**env, **FAST_SCHEDULE})
    worker = start_worker("victim", env=env)
    wait_for(lambda: published_batches(database_url) >= 3, timeout=60, what="the drain to start")

    for child in worker.child_pids():  # a pool child dies mid-batch: the main process redelivers at once
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: "exited with 'signal 9 (SIGKILL)'" in worker.log(), what="the main process to see them die")
    # More work once new children run (a backlog enqueued at the start could be drained by now): the host dies
    # while its new children hold some of it.
    batch_ids += enqueue_backlog(20_000, 500, seed=43)
    held = wait_for(
        lambda: frozen_holding_a_batch(worker, redis_url, database_url), timeout=30, what="the victim to hold a batch"
    )
    worker.kill()  # the whole worker host dies, with the batches it had received
    killed_at = time.monotonic()
    stored_at_crash = published_batches(database_url)
    assert stored_at_crash < len(batch_ids), "the crash came too late to prove anything"

    rescuer = start_worker("rescuer", env=env)
    # Stored means committed: a batch the host committed but died before announcing is published later by the
    # outbox sweep, after SWEEP_GRACE_S, as designed.
    stored = "SELECT count(*) FROM batch WHERE state = 'ingested' AND id::text = ANY(:ids)"
    wait_for(
        lambda: scalar(database_url, stored, ids=held) == len(held),
        timeout=60,
        what="the dead host's batches stored",
        explain=lambda: describe_pipeline(database_url, redis_url, worker, rescuer),
    )
    recovered_in = time.monotonic() - killed_at
    print(f"dead host's {len(held)} batches stored {recovered_in:.1f} s after the kill (visibility timeout 40 s)")
    assert recovered_in < 30
    wait_until_every_batch_stored(database_url, redis_url, batch_ids, worker, rescuer)
    assert_stored_exactly_once(database_url, redis_url, batch_ids, 30_000)


def test_a_message_lost_between_redis_and_a_worker_is_sent_again_by_the_scheduled_job(
    start_worker: StartWorker, start_beat: StartBeat, database_url: str, redis_url: str
) -> None:
    batch_ids = enqueue_backlog(2_000, 250)
    client = redis.Redis.from_url(redis_url)
    # What BRPOP does when a worker takes a message; that worker's host dies before it records the message as
    # unacknowledged, so no visibility timeout will ever bring it back.
    assert client.rpop("ingest") is not None
    quick = {**FAST_RECOVERY, "VISIBILITY_TIMEOUT_S": "10", "TASK_SOFT_TIME_LIMIT_S": "3", "TASK_TIME_LIMIT_S": "4"}
    worker = start_worker("survivor", env=quick)
    start_beat({**quick, **FAST_SCHEDULE})

    wait_until_every_batch_stored(
        database_url, redis_url, batch_ids, worker, what="every batch stored, the lost one too"
    )
    assert_stored_exactly_once(database_url, redis_url, batch_ids, 2_000)
    wait_for(lambda: custody.figures(client)[:2] == (0, 1), timeout=30, what="custody to end, one batch re-sent")


def test_postgres_restart_during_a_drain_retries_until_stored(
    start_worker: StartWorker, postgres: PostgresServer | None, database_url: str, redis_url: str
) -> None:
    if postgres is None:
        pytest.skip("TEST_DATABASE_URL points at a server this suite does not own and cannot restart")
    batch_ids = enqueue_backlog(15_000, 500)
    worker = start_worker("drain", env=FAST_RECOVERY)
    wait_for(lambda: published_batches(database_url) >= 2, timeout=60, what="the drain to start")
    postgres.stop("fast")
    time.sleep(3)  # an outage long enough for several retries
    postgres.start()

    wait_until_every_batch_stored(database_url, redis_url, batch_ids, worker)
    assert_stored_exactly_once(database_url, redis_url, batch_ids, 15_000)
    assert scalar(database_url, "SELECT max(attempts) FROM batch") > 1, "retries should show in the batch record"


def test_redis_restart_with_queued_batches_keeps_every_accepted_batch(
    start_worker: StartWorker, redis_server: RedisServer | None, database_url: str, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("TEST_REDIS_URL points at a server this suite does not own and cannot restart")
    batch_ids = enqueue_backlog(5_000, 250)
    redis_server.stop()  # SIGTERM: Redis writes its append-only file, as on a clean restart
    redis_server.start()

    worker = start_worker("after-restart", env=FAST_RECOVERY)
    wait_until_every_batch_stored(database_url, redis_url, batch_ids, worker)
    assert_stored_exactly_once(database_url, redis_url, batch_ids, 5_000)


def test_a_task_stuck_on_a_lock_retries_until_released_and_leaves_no_session_idle_in_transaction(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    # Another session holds the batch table until the worker has been cut by PostgreSQL's lock_timeout (a quarter
    # of the 8 s soft time limit), as a retryable error, long before Celery's limits would. The worker is ready
    # before the lock is taken, so how long it takes to start changes nothing.
    worker = start_worker("stuck", env=FAST_RECOVERY)
    holder = hold_the_batch_table(database_url)
    try:
        receipt = enqueue_batch(list(generate_traces(30)), source="stuck")
        wait_for(
            lambda: "canceling statement due to lock timeout" in worker.log(), timeout=60, what="a claim cut by it"
        )
    finally:
        release_the_batch_table(database_url, holder)
    result = AsyncResult(receipt.task_id, app=app).get(timeout=90)

    assert result["state"] == "ingested" and result["count"] == 30
    assert scalar(database_url, "SELECT count(*) FROM trace") == 30
    assert scalar(database_url, "SELECT attempts FROM batch") > 1, "the lock should have cost retries"
    wait_for(lambda: nothing_in_flight(redis_url), timeout=30, what="the retries to end")
    ours_idle_in_transaction = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE 'tunix-ingest worker %' AND state = 'idle in transaction'"
    )
    assert scalar(database_url, ours_idle_in_transaction) == 0
