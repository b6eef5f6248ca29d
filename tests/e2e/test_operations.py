"""What ops run and watch: Flower (API and a real browser), one beat at a time, the Procfile under honcho,
docker-compose.yml, the metrics endpoint and two worker nodes on one queue."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from celery.result import AsyncResult
from ruamel.yaml import YAML

from services.validation import validate_traces
from tests.db import published_batches, query, scalar
from tests.e2e.conftest import StartBeat, StartWorker
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from worker import app, enqueue_batch, keys
from worker.localstack.ports import free_port
from worker.localstack.processes import ChildProcess, celery_command, cli_command
from worker.localstack.sample_traces import generate_traces

ROOT = Path(__file__).resolve().parents[2]


def http_get(url: str, auth: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310  (tests call loopback http only)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (loopback only)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def test_flower_shows_the_worker_and_its_tasks_behind_basic_auth_and_renders_in_a_browser(
    worker_process: WorkerProcess, tmp_path: Path
) -> None:
    port, auth = free_port(), "ops:flower-pw"
    flower = ChildProcess(
        "flower",
        celery_command("flower", f"--port={port}"),
        tmp_path / "flower.log",
        env={**os.environ, "FLOWER_BASIC_AUTH": auth},
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/healthcheck")[0] == 200, timeout=30, what="Flower to answer")
        assert http_get(f"{base}/api/workers")[0] == 401
        assert http_get(f"{base}/api/workers", auth="ops:wrong")[0] == 401
        workers = wait_for(
            lambda: json.loads(http_get(f"{base}/api/workers?refresh=1", auth)[1] or "{}"),
            timeout=30,
            what="Flower to list the worker",
        )
        assert any(name.startswith("e2e@") for name in workers)

        def ingest_task_seen() -> list[dict[str, Any]]:
            # Flower only sees events sent after its event receiver connected: run a batch until one shows up.
            receipt = enqueue_batch(list(generate_traces(5)), source="flower-test")
            AsyncResult(receipt.task_id, app=app).get(timeout=60)
            tasks = json.loads(http_get(f"{base}/api/tasks", auth)[1] or "{}")
            return [t for t in tasks.values() if t.get("name") == "ingest.batch" and t.get("state") == "SUCCESS"]

        task = wait_for(ingest_task_seen, timeout=60, interval=1, what="Flower to list a succeeded ingest task")[0]
        assert task["worker"].startswith("e2e@")
        assert re.fullmatch(r"[0-9a-f-]{36}, n=5", task["args"]), task["args"]  # the claim check, readable
        # The result's head, not a wall of ids: the batch, its state and count (RESULT_SHOWN_CHARS).
        assert "'state': 'ingested', 'count': 5" in task["result"] and len(task["result"]) < 250, task["result"]

        browser = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--window-size=1400,900",
        ]
        page = f"http://{auth}@127.0.0.1:{port}/workers"
        dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        screenshot = tmp_path / "flower.png"
        subprocess.run([*browser, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)
    finally:
        flower.stop()
    assert "e2e@" in dom, dom[-2000:]
    assert screenshot.stat().st_size > 10_000


def test_flower_takes_its_basic_auth_from_the_settings_dotenv_file_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FLOWER_BASIC_AUTH=ops:from-dotenv\n")  # not in the environment
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    with (tmp_path / "flower.log").open("wb") as log:
        flower = subprocess.Popen(
            celery_command("flower", f"--port={port}"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/healthcheck")[0] == 200, timeout=30, what="Flower to answer")
        assert http_get(f"{base}/api/workers")[0] == 401
        assert http_get(f"{base}/api/workers", auth="ops:from-dotenv")[0] == 200
    finally:
        flower.terminate()
        flower.wait(30)


def test_flower_refuses_to_listen_beyond_loopback_without_auth(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    done = subprocess.run(
        celery_command("flower", "--address=0.0.0.0", f"--port={free_port()}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "refusing to serve Flower on 0.0.0.0 without authentication" in done.stderr


def test_two_beats_never_both_fire_and_the_standby_takes_over(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "SWEEP_INTERVAL_S": "1", "REDRIVE_INTERVAL_S": "3600", "REFRESH_INTERVAL_S": "3600"}
    beats = [
        ChildProcess(
            f"beat{i}", celery_command("beat", "--loglevel", "INFO"), tmp_path / f"beat{i}.log", env=env
        ).start()
        for i in range(2)
    ]
    try:
        wait_for(
            lambda: sum(b.log_path.read_text().count("Sending due task") for b in beats) >= 5,
            timeout=60,
            what="beat to fire five times",
        )
        fired = [b.log_path.read_text().count("Sending due task") for b in beats]
        assert sorted(fired)[0] == 0, f"both beats fired: {fired}"
        leader, standby = (beats[0], beats[1]) if fired[0] else (beats[1], beats[0])
        leader.stop()
        wait_for(
            lambda: standby.log_path.read_text().count("Sending due task") >= 2,
            timeout=90,
            what="the standby to take over",
        )
    finally:
        for beat in beats:
            beat.stop()


def procfile_commands() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def _normalized(command: str) -> list[str]:
    command = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command.removeprefix("exec "))
    words = shlex.split(command)
    return [word for word in words if not word.startswith(("--address=", "--host=", "--workers="))]  # vs container


def test_docker_compose_is_valid_and_runs_what_the_procfile_runs() -> None:
    schema = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    compose: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    procfile = procfile_commands()
    for procfile_name, service in (
        ("release", "migrate"),
        ("worker", "worker"),
        ("beat", "beat"),
        ("flower", "flower"),
        ("web", "api"),
    ):
        assert _normalized(services[service]["command"]) == _normalized(procfile[procfile_name])
    assert "--appendonly" in services["redis"]["command"] and "--requirepass" in services["redis"]["command"]
    assert "healthcheck" in services["postgres"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert "INGEST_API_TOKENS" in services["api"]["environment"]
    # The "ha" profile: two replicas of the master and three Sentinels watching it (quorum 2).
    ha = {name for name, service in services.items() if service.get("profiles") == ["ha"]}
    assert ha == {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert services["redis-replica-2"]["command"][3:6] == ["--replicaof", "redis", "6379"]
    assert "sentinel monitor tunix redis 6379 2" in services["sentinel-3"]["command"][2]
    assert "--sentinel" in services["sentinel-3"]["command"][2]
    for name in ("worker", "beat", "flower", "api"):
        assert {"REDIS_URL", "REDIS_SENTINEL_MASTER", "INGEST_REDIS_MIN_REPLICAS"} <= set(services[name]["environment"])


def test_procfile_runs_under_honcho_release_first(database_url: str, tmp_path: Path) -> None:
    honcho = str(Path(sys.executable).parent / "honcho")
    env = {
        **os.environ,
        "FLOWER_PORT": str(free_port()),
        "SWEEP_INTERVAL_S": "1",
        "INGEST_API_ALLOW_ANONYMOUS": "1",  # the web process on loopback, without tokens
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    release = subprocess.run(
        [honcho, "-f", str(ROOT / "Procfile"), "run", *shlex.split(procfile_commands()["release"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert release.returncode == 0, release.stderr
    log = tmp_path / "honcho.log"
    with log.open("w") as output:
        running = subprocess.Popen(
            [honcho, "-f", str(ROOT / "Procfile"), "start", "worker", "beat", "flower", "web"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_for(lambda: " ready." in log.read_text(), timeout=60, what="the worker under honcho")
        receipt = enqueue_batch(list(generate_traces(20)), source="honcho")
        assert AsyncResult(receipt.task_id, app=app).get(timeout=60)["count"] == 20
        wait_for(
            lambda: "Sending due task publish-unpublished-batches" in log.read_text(),
            timeout=60,
            what="beat under honcho",
        )
        wait_for(
            lambda: http_get(f"http://127.0.0.1:{env['FLOWER_PORT']}/healthcheck")[0] == 200,
            timeout=30,
            what="Flower under honcho",
        )
        # honcho gives each process its PORT, as a platform would: the API says where it listens.
        listening = wait_for(
            lambda: re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text()),
            timeout=30,
            what="the HTTP API under honcho",
        )
        web = str(listening.group(1)) if listening else ""
        assert http_get(f"{web}/readyz")[0] == 200
        answer = httpx.post(f"{web}/api/traces/batch?wait=30", json=list(generate_traces(5)), timeout=60)
        assert answer.status_code == 201 and answer.json()["created_count"] == 5
    finally:
        running.send_signal(signal.SIGTERM)
        code = running.wait(60)
    assert code == 128 + signal.SIGTERM, log.read_text()[-3000:]  # honcho reports the signal it was stopped by
    for process in ("worker.1", "beat.1", "flower.1"):
        assert f"{process} stopped (rc=0)" in log.read_text()  # each one shut down cleanly
    # uvicorn shuts down gracefully, then re-raises SIGTERM so that its exit status tells why it stopped.
    assert "web.1    | INFO:     Application shutdown complete." in log.read_text()
    assert "web.1 stopped (rc=-15)" in log.read_text()
    assert scalar(database_url, "SELECT count(*) FROM trace") == 25


def test_metrics_endpoint_serves_ingest_figures(worker_process: WorkerProcess, tmp_path: Path) -> None:
    receipt = enqueue_batch(list(generate_traces(12)), source="metrics")
    AsyncResult(receipt.task_id, app=app).get(timeout=60)
    port = free_port()
    server = ChildProcess(
        "metrics",
        cli_command("metrics", "--port", str(port)),
        tmp_path / "metrics.log",
    ).start()
    try:
        text = wait_for(lambda: http_get(f"http://127.0.0.1:{port}/metrics")[1], timeout=30, what="metrics")
    finally:
        server.stop()
    assert "tunix_ingest_traces_stored 12.0" in text
    assert 'tunix_ingest_batches{state="ingested"} 1.0' in text
    assert "tunix_ingest_queue_depth 0.0" in text and "tunix_ingest_unpublished_batches 0.0" in text
    assert "tunix_ingest_batches_in_transit 0.0" in text and "tunix_ingest_lost_batches_resent_total 0.0" in text


def test_two_worker_nodes_drain_one_queue_with_every_row_stored_once(
    start_worker: StartWorker, database_url: str
) -> None:
    generated = list(generate_traces(10_000))
    nodes = [start_worker(name, pool="solo", concurrency=1) for name in ("a", "b")]  # both ready before the work
    batch_ids = [enqueue_batch(generated[i : i + 250], source="scale-out").batch_id for i in range(0, 10_000, 250)]
    wait_for(lambda: published_batches(database_url) == len(batch_ids), timeout=120, what="both nodes to drain")
    assert scalar(database_url, "SELECT count(*) FROM trace") == 10_000
    assert scalar(database_url, "SELECT count(DISTINCT (batch_id, position)) FROM trace") == 10_000

    def handled() -> list[int]:
        return [node.log().count("succeeded in") for node in nodes]

    # A node logs "succeeded" after the batch's event is out: the last lines may come a moment after the count.
    wait_for(
        lambda: sum(handled()) >= len(batch_ids),
        timeout=30,
        what="every success logged",
        explain=lambda: str(handled()),
    )
    assert min(handled()) > 0, handled()


def test_scheduled_jobs_redrive_failed_batches_and_refresh_derived_fields(
    worker_process: WorkerProcess, database_url: str
) -> None:
    traces = list(generate_traces(8))
    batch_id = uuid.uuid4()
    message = {"batch_id": str(batch_id), "source": "redrive", "traces": traces}
    content_hash = validate_traces(traces, max_batch=1000, max_bytes=1 << 23).content_hash
    query(
        database_url,  # a batch parked as failed while the database was away
        "INSERT INTO batch (id, source, state, trace_count, content_hash, attempts, raw_payload) "
        "VALUES (:id, 'redrive', 'failed', 8, :hash, 12, :payload)",
        id=batch_id,
        hash=content_hash,
        payload=json.dumps(message),
    )

    assert app.send_task("reprocess.redrive", queue="reprocess").get(timeout=60) == 1
    wait_for(lambda: published_batches(database_url) == 1, timeout=30, what="the re-driven batch to be stored")
    assert scalar(database_url, "SELECT count(*) FROM trace") == 8
    assert scalar(database_url, "SELECT redrives FROM batch") == 1

    query(database_url, "UPDATE trace SET derivation_version = 0, total_chars = -1")  # as a version bump would
    assert app.send_task("reprocess.refresh_derived", queue="reprocess").get(timeout=60) is True
    wait_for(
        lambda: scalar(database_url, "SELECT count(*) FROM trace WHERE derivation_version = 0") == 0,
        timeout=30,
        what="the refresh chunk",
    )
    assert scalar(database_url, "SELECT min(total_chars) FROM trace") > 0


def test_the_plain_celery_worker_command_ingests_and_runs_scheduled_jobs(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    plain = ChildProcess("plain worker", celery_command("worker"), tmp_path / "plain.log").start()  # no -Q, no -P
    try:
        receipt = enqueue_batch(list(generate_traces(12)), source="plain-worker")

        assert AsyncResult(receipt.task_id, app=app).get(timeout=60)["count"] == 12
        assert app.send_task("reprocess.sweep").get(timeout=60) == 0  # the default queue is served too
        assert scalar(database_url, "SELECT count(*) FROM trace") == 12
        assert redis.Redis.from_url(redis_url).llen("reprocess") == 0  # each message landed in one queue only
    finally:
        plain.stop()


def test_the_outbox_sweep_stays_on_time_while_a_large_refresh_runs(
    start_worker: StartWorker, start_beat: StartBeat, database_url: str, redis_url: str
) -> None:
    generated = list(generate_traces(40_000, padding=0))
    receipts = [enqueue_batch(generated[start : start + 1000], source="refresh") for start in range(0, 40_000, 1000)]
    schedule = {"SWEEP_INTERVAL_S": "1", "REFRESH_INTERVAL_S": "1", "REFRESH_CHUNK_SIZE": "200", "SWEEP_GRACE_S": "0"}
    start_worker("refresher", env=schedule)
    wait_for(lambda: published_batches(database_url) == len(receipts), timeout=120, what="the batches stored")
    query(database_url, "UPDATE trace SET derivation_version = 0")  # as a version bump would: 40,000 stale rows
    owed = receipts[0].batch_id
    query(database_url, "UPDATE batch SET published_at = NULL WHERE id = :id", id=owed)  # the sweep owes its event

    start_beat(schedule)
    client = redis.Redis.from_url(redis_url)
    deepest = 0

    def queued_chunks() -> int:
        """Refresh chunks waiting in the scheduled jobs' queue (beat's own ticks may wait there beside them)."""
        waiting = [json.loads(message)["headers"]["task"] for message in client.lrange("reprocess", 0, -1)]
        return waiting.count(keys.REFRESH_CHUNK_TASK)

    def published_while_refreshing() -> bool:
        nonlocal deepest
        deepest = max(deepest, queued_chunks())
        return bool(scalar(database_url, "SELECT published_at IS NOT NULL FROM batch WHERE id = :id", id=owed))

    wait_for(published_while_refreshing, timeout=20, interval=0.05, what="the sweep to publish the owed batch")
    assert scalar(database_url, "SELECT count(*) FROM trace WHERE derivation_version = 0") > 0, "refresh too quick"
    wait_for(
        lambda: scalar(database_url, "SELECT count(*) FROM trace WHERE derivation_version = 0") == 0,
        timeout=120,
        what="the refresh to finish",
    )
    assert deepest <= 1, f"{deepest} refresh chunks waited at once: they would crowd out the sweep"
    # Beat starts a refresh every second; with nothing stale left, each chain ends at once and drops its lock.
    wait_for(lambda: client.exists("ingest:refresh:running") == 0, timeout=15, what="the refresh lock released")
