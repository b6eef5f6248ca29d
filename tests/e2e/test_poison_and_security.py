"""§8.4–8.6 and §8.8 with real worker processes: poison messages, publish failures, duplicate delivery,
pickle injection and credentials in logs."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer

from tests.db import published_batches, query, scalar
from tests.e2e.commands import cli
from tests.e2e.conftest import StartWorker
from tests.polling import wait_for
from tests.streams import events_by_batch, stream_events
from worker import app, enqueue_batch
from worker.edge.wire import task_kwargs_of
from worker.localstack.ports import free_port
from worker.localstack.sample_traces import generate_traces
from worker.localstack.servers import RedisServer


def raw_message(traces: list[dict[str, Any]], batch_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {"batch_id": str(batch_id or uuid.uuid4()), "source": "hand-crafted", "traces": traces}


def test_hand_crafted_invalid_message_is_rejected_first_try_and_the_queue_keeps_flowing(
    worker_process: object, database_url: str
) -> None:
    bad_traces = [*generate_traces(2), {"prompt": "no answer", "steps": []}]
    poison = raw_message(bad_traces)
    poison_task = app.send_task("ingest.batch", kwargs=poison, queue="ingest")
    not_even_a_batch = app.send_task("ingest.batch", args=[1, 2], kwargs={"batch_id": "nope"}, queue="ingest")
    good = enqueue_batch(list(generate_traces(5)), source="after-poison")

    result = AsyncResult(poison_task.id, app=app).get(timeout=60)
    assert result["state"] == "rejected"
    assert {(e["trace_index"], e["field_path"]) for e in result["errors"]} >= {(2, "final_answer"), (2, "steps")}
    assert AsyncResult(not_even_a_batch.id, app=app).get(timeout=60)["state"] == "rejected"
    assert AsyncResult(good.task_id, app=app).get(timeout=60)["count"] == 5

    (row,) = query(
        database_url,
        "SELECT state, attempts, errors, raw_payload FROM batch WHERE id = :id",
        id=uuid.UUID(poison["batch_id"]),
    )
    assert row.state == "rejected" and row.attempts == 1
    assert json.loads(row.raw_payload) == poison
    assert scalar(database_url, "SELECT count(*) FROM trace") == 5  # nothing of the poison batch


def test_failed_publish_leaves_the_batch_for_the_sweep_which_publishes_without_reinserting(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    broken_stream = "traces:broken"
    client = redis.Redis.from_url(redis_url)
    client.set(broken_stream, "not a stream")  # XADD now fails with WRONGTYPE, a real Redis error
    start_worker("publisher", env={"INGEST_EVENTS_STREAM": broken_stream, "SWEEP_GRACE_S": "0"})
    receipts = [enqueue_batch(list(generate_traces(50, seed=s)), source="outbox") for s in range(3)]
    results = [AsyncResult(r.task_id, app=app).get(timeout=60) for r in receipts]
    assert [r["published"] for r in results] == [False, False, False]
    assert scalar(database_url, "SELECT count(*) FROM trace") == 150
    assert published_batches(database_url) == 0

    client.delete(broken_stream)  # the outage ends
    swept = app.send_task("reprocess.sweep", queue="reprocess").get(timeout=60)

    assert swept == 3
    assert published_batches(database_url) == 3
    assert scalar(database_url, "SELECT count(*) FROM trace") == 150
    events = stream_events(redis_url, broken_stream)
    assert sorted(e["batch_id"] for e in events) == sorted(str(r.batch_id) for r in receipts)
    assert app.send_task("reprocess.sweep", queue="reprocess").get(timeout=60) == 0


def test_the_same_message_delivered_twice_at_once_is_stored_once(
    start_worker: StartWorker, database_url: str, redis_url: str
) -> None:
    first = enqueue_batch(list(generate_traces(1000, padding=20)), source="twice")
    (ticket,) = [task_kwargs_of(raw) for raw in redis.Redis.from_url(redis_url).lrange("ingest", 0, -1)]
    second = app.send_task("ingest.batch", kwargs=ticket, queue="ingest")  # the same claim check once more
    start_worker("twice")  # two pool processes take the two copies at once

    one, two = (AsyncResult(task_id, app=app).get(timeout=60) for task_id in (first.task_id, second.id))

    assert one["state"] == two["state"] == "ingested"
    assert one["ids"] == two["ids"] and len(one["ids"]) == 1000
    assert scalar(database_url, "SELECT count(*) FROM trace") == 1000
    assert len(events_by_batch(redis_url)[str(first.batch_id)]) in (1, 2)  # at least once, never lost


class _Exploit:
    """Unpickling this runs a shell command: a worker that accepted pickle would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_is_refused_and_never_executed(worker_process: Any, redis_url: str) -> None:
    marker = Path(tempfile.gettempdir()) / f"pickle-ran-{uuid.uuid4().hex}"
    with Connection(redis_url) as connection:
        producer = Producer(connection, exchange=Exchange("ingest", type="direct"), routing_key="ingest")
        producer.publish(
            [[], {"batch_id": str(uuid.uuid4()), "payload": _Exploit(str(marker))}, {}],
            serializer="pickle",
            headers={"task": "ingest.batch", "id": str(uuid.uuid4()), "lang": "py"},
            declare=[],
        )
    follow_up = enqueue_batch(list(generate_traces(3)), source="after-pickle")

    assert AsyncResult(follow_up.task_id, app=app).get(timeout=60)["count"] == 3
    wait_for(
        lambda: "Refusing to deserialize untrusted content of type pickle" in worker_process.log(),
        timeout=30,
        what="the refusal in the log",
    )
    assert not marker.exists()


def test_no_credential_appears_in_logs_or_errors_with_a_password_protected_redis(
    start_worker: StartWorker, database_url: str, tmp_path: Path
) -> None:
    password = f"s3cret-{uuid.uuid4().hex[:12]}"
    server = RedisServer(tmp_path / "redis", password=password)
    server.start()
    try:
        env = {"REDIS_URL": server.url, "DATABASE_URL": database_url}
        worker = start_worker("secured", env=env)
        traces = tmp_path / "traces.jsonl"
        traces.write_text("\n".join(json.dumps(t) for t in generate_traces(20)) + "\nnot json\n")
        cli_env = {**os.environ, **env}
        enqueue = cli("enqueue", str(traces), "--wait", "--batch-size", "10", env=cli_env)
        stats = cli("stats", env=cli_env)
        wrong = cli("stats", env={**cli_env, "REDIS_URL": server.url.replace(password, "wrong-" + password)})
        unreachable = cli(
            "migrate", env={**cli_env, "DATABASE_URL": f"postgresql+asyncpg://u:{password}@127.0.0.1:1/x"}
        )
        worker.stop()
    finally:
        server.remove()

    assert "stored 20 traces" in enqueue.stdout and enqueue.returncode == 1  # the bad line is reported
    assert stats.returncode == 0 and wrong.returncode == 1 and unreachable.returncode == 1
    for output in (enqueue, stats, wrong, unreachable):
        assert password not in output.stdout + output.stderr
        assert "Traceback" not in output.stderr
    assert password not in worker.log()


def _tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    files = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")}
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["ca.key"],
            "-out",
            files["ca.crt"],
            "-days",
            "1",
            "-subj",
            "/CN=tunix-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["server.key"],
            "-out",
            files["server.csr"],
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            files["server.csr"],
            "-CA",
            files["ca.crt"],
            "-CAkey",
            files["ca.key"],
            "-CAcreateserial",
            "-out",
            files["server.crt"],
            "-days",
            "1",
            "-extfile",
            directory / "san.cnf",
        ],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return files


def test_rediss_with_a_private_ca_carries_batches_end_to_end(
    start_worker: StartWorker, database_url: str, tmp_path: Path
) -> None:
    files = _tls_files(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--tls-cert-file",
            str(files["server.crt"]),
            "--tls-key-file",
            str(files["server.key"]),
            "--tls-ca-cert-file",
            str(files["ca.crt"]),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-pw",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={files['ca.crt']}"
    try:
        wait_for(lambda: _pings(url), timeout=15, what="the TLS Redis")
        env = {"REDIS_URL": url, "DATABASE_URL": database_url}
        start_worker("tls", env=env)
        traces = tmp_path / "traces.jsonl"
        traces.write_text("\n".join(json.dumps(t) for t in generate_traces(30)))
        done = cli("enqueue", str(traces), "--wait", env={**os.environ, **env})
        plain = cli("stats", env={**os.environ, **env, "REDIS_URL": url.replace("rediss://", "redis://")})
    finally:
        server.terminate()
        server.wait(10)
    assert done.returncode == 0, done.stderr
    assert "stored 30 traces" in done.stdout
    assert scalar(database_url, "SELECT count(*) FROM trace") == 30
    assert plain.returncode == 1 and "tls-pw" not in plain.stderr  # plaintext is refused, in one line


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False
