"""§4: `EnqueueFailed` means "outcome unknown", carries the batch id, and a retry with that id stores the batch
once, whether the send failed after custody took the batch, or only its reply was lost after it landed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from tests.db import published_batches, scalar
from tests.e2e.conftest import FAST_RECOVERY, FAST_SCHEDULE, StartBeat, StartWorker
from tests.polling import wait_for
from worker import enqueue_batch
from worker.custody import records as custody
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces

#: Custody's lost-batch re-send after 10 + 10 + 4 = 24 s instead of 7 minutes.
QUICK = {**FAST_RECOVERY, "VISIBILITY_TIMEOUT_S": "10", "TASK_SOFT_TIME_LIMIT_S": "3", "TASK_TIME_LIMIT_S": "4"}

PRODUCER = """
import json, sys, uuid
from worker import EnqueueFailed, enqueue_batch
from worker.localstack.sample_traces import generate_traces
try:
    enqueue_batch(list(generate_traces(40, seed=5)), source="unlucky", batch_id=uuid.UUID(sys.argv[1]))
    print(json.dumps({"outcome": "accepted"}))
except EnqueueFailed as failed:
    print(json.dumps({"outcome": "unknown", "batch_id": str(failed.batch_id), "message": str(failed)}))
"""


def produce_through(redis_url: str, batch_id: uuid.UUID) -> dict[str, str]:
    """One enqueue in a producer process of its own that reaches Redis at `redis_url`."""
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(batch_id)],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def retry_and_check_stored_once(database_url: str, redis_url: str, batch_id: uuid.UUID) -> None:
    enqueue_batch(list(generate_traces(40, seed=5)), source="unlucky", batch_id=batch_id)  # the retry, same id
    wait_for(lambda: published_batches(database_url) == 1, timeout=60, what="the batch stored")
    wait_for(
        lambda: custody.figures(redis.Redis.from_url(redis_url)).in_transit == 0, timeout=90, what="custody to end"
    )
    assert scalar(database_url, "SELECT count(*) FROM trace") == 40
    assert scalar(database_url, "SELECT id FROM batch") == batch_id


@pytest.fixture
def producer_without_lpush(redis_url: str) -> Iterator[str]:
    """A Redis user that may do everything custody does, but not push to a list: the send fails after custody."""
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(
        "no-push",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
        commands=["-lpush"],
    )
    address = urlsplit(redis_url)
    yield f"redis://no-push:pw@{address.hostname}:{address.port}/0"
    client.acl_deluser("no-push")


def test_a_send_that_fails_after_custody_took_the_batch_is_unknown_and_the_batch_is_stored_once(
    start_worker: StartWorker,
    start_beat: StartBeat,
    producer_without_lpush: str,
    database_url: str,
    redis_url: str,
) -> None:
    batch_id = uuid.uuid4()
    first = produce_through(producer_without_lpush, batch_id)
    assert first["outcome"] == "unknown" and first["batch_id"] == str(batch_id)
    assert "pw@" not in first["message"] and f"retry with batch_id {batch_id}" in first["message"]
    assert custody.figures(redis.Redis.from_url(redis_url)).in_transit == 1  # Redis holds it after all

    start_worker("after-failed-send", env=QUICK)
    start_beat({**QUICK, **FAST_SCHEDULE})
    retry_and_check_stored_once(database_url, redis_url, batch_id)


class ReplyDroppingProxy:
    """Forwards a Redis connection, but cuts it right after passing on an LPUSH, before Redis's reply comes
    back: the message lands, the producer never hears so."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.pushes_cut = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_redis: bool) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
                if to_redis and b"LPUSH" in chunk.upper():
                    self.pushes_cut += 1
                    break
        except OSError:
            pass
        for end in (source, target):
            end.close()

    def close(self) -> None:
        self.server.close()


def test_a_reply_lost_after_the_message_landed_is_unknown_and_the_retry_stores_nothing_twice(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    proxy = ReplyDroppingProxy(urlsplit(redis_url).port or 6379)
    batch_id = uuid.uuid4()
    try:
        first = produce_through(f"redis://127.0.0.1:{proxy.port}/0", batch_id)
    finally:
        proxy.close()
    assert first["outcome"] == "unknown" and first["batch_id"] == str(batch_id)
    assert proxy.pushes_cut >= 1
    assert redis.Redis.from_url(redis_url).llen("ingest") == proxy.pushes_cut  # the message did land

    start_worker("after-lost-reply")
    retry_and_check_stored_once(database_url, redis_url, batch_id)
