"""§6b with real processes: `tunix-ingest follow` (a subprocess) reading what real workers stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime
from typing import Any

import redis
from celery.result import AsyncResult

from tests.conftest import SAMPLE_DATA
from tests.db import published_batches, query, scalar
from tests.e2e.commands import cli
from tests.e2e.workers import WorkerProcess
from tests.polling import wait_for
from tests.streams import STREAM, stream_events
from worker import app, enqueue_batch, follow_ingested
from worker.client.consumer_group import malformed_key
from worker.localstack.processes import cli_command
from worker.localstack.sample_traces import generate_traces


def store(batches: list[list[dict[str, Any]]], database_url: str, source: str = "follow") -> list[str]:
    receipts = [enqueue_batch(batch, source=source) for batch in batches]
    for receipt in receipts:
        AsyncResult(receipt.task_id, app=app).get(timeout=60)
    wait_for(lambda: published_batches(database_url) >= len(receipts), what="every batch published")
    return [str(receipt.batch_id) for receipt in receipts]


def pending(client: redis.Redis, group: str = "follow") -> int:
    """Entries delivered to the group and not acknowledged (0 while the group does not exist yet)."""
    try:
        return int(client.xpending(STREAM, group)["pending"])
    except redis.ResponseError:
        return 0


def lines_of(output: str) -> list[dict[str, Any]]:
    return [json.loads(text) for text in output.splitlines() if text.strip()]


def test_everything_stored_comes_out_once_equal_to_the_stored_rows(
    worker_process: WorkerProcess, database_url: str
) -> None:
    with (SAMPLE_DATA / "dev-reasoning-v2.jsonl").open(encoding="utf-8") as sample:
        real = [json.loads(text) for text in sample]
    generated = list(generate_traces(2000, seed=4))
    store([real[i : i + 100] for i in range(0, len(real), 100)] + [generated[:1000], generated[1000:]], database_url)

    done = cli("follow", "--from-start", "--idle-exit", "3")

    assert done.returncode == 0, done.stderr
    exported = lines_of(done.stdout)
    rows = query(
        database_url,
        "SELECT batch_id, id, position, created_at, trace_version, prompt, final_answer, steps, meta FROM trace",
    )
    assert len(exported) == len(rows) == 2550
    assert len({line["id"] for line in exported}) == 2550  # each trace once
    by_id = {line["id"]: line for line in exported}
    for row in rows:
        line = by_id[row.id]
        assert (line["batch_id"], line["position"]) == (str(row.batch_id), row.position)
        assert datetime.fromisoformat(line["created_at"]) == row.created_at
        stored = {key: getattr(row, key) for key in ("trace_version", "prompt", "final_answer", "steps", "meta")}
        assert {key: line[key] for key in stored} == stored
    assert "handed over 8 batches (2,550 traces) in " in done.stderr


def test_a_batch_announced_twice_is_handed_once_per_group_and_a_second_group_gets_everything(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    batch_ids = store([list(generate_traces(5, seed=n)) for n in range(3)], database_url)
    first = lines_of(cli("follow", "--group", "a", "--from-start", "--idle-exit", "2", "--batches").stdout)
    assert sorted(line["batch_id"] for line in first) == sorted(batch_ids)

    duplicate = stream_events(redis_url)[0]  # what the sweep publishes when it announces a batch again
    redis.Redis.from_url(redis_url).xadd(STREAM, duplicate)  # type: ignore[arg-type]
    again = cli("follow", "--group", "a", "--idle-exit", "2", "--batches")
    other = cli("follow", "--group", "b", "--from-start", "--idle-exit", "2", "--batches")

    assert again.returncode == 0 and lines_of(again.stdout) == []
    assert sorted(line["batch_id"] for line in lines_of(other.stdout)) == sorted(batch_ids)
    stats = json.loads(cli("stats", "--json").stdout)["consumer_groups"]
    assert stats == {
        "a": {"pending": 0, "lag": 0, "short_batches": 0},
        "b": {"pending": 0, "lag": 0, "short_batches": 0},
    }


def test_a_consumer_killed_mid_stream_leaves_its_batches_to_another_consumer_of_the_group(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    generated = list(generate_traces(2000, seed=6, padding=60))
    batch_ids = store([generated[i : i + 100] for i in range(0, 2000, 100)], database_url)
    command = cli_command("follow", "--from-start", "--batches")
    victim = subprocess.Popen([*command, "--consumer", "victim"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(redis_url)
    # Nobody reads its output: it blocks writing its first batch, with that batch (and those read with it) pending.
    wait_for(lambda: pending(client) > 0, what="the victim to hold batches")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    assert victim.stdout is not None
    written = victim.stdout.read().decode(errors="replace").splitlines()
    victim_batches = {json.loads(text)["batch_id"] for text in written if text.endswith("}")}

    rescuer = cli("follow", "--consumer", "rescuer", "--batches", "--claim-idle", "1", "--idle-exit", "4")

    rescued = [line["batch_id"] for line in lines_of(rescuer.stdout)]
    assert len(rescued) == len(set(rescued))
    assert set(rescued) | victim_batches == set(batch_ids)  # every batch handed over at least once
    assert len(victim_batches & set(rescued)) <= 1  # only the one in flight at the kill came twice
    assert pending(client) == 0


def test_entries_that_are_no_event_are_reported_counted_and_skipped_and_a_new_group_is_created(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(STREAM, {"batch_id": "3f6e0b1c-0000-4000-8000-000000000000", "ids": "not json"})
    client.xadd(STREAM, {"written": "by hand"})
    (batch_id,) = store([list(generate_traces(4))], database_url)

    done = cli("follow", "--group", "fresh", "--from-start", "--idle-exit", "2")

    assert done.returncode == 0, done.stderr
    assert {line["batch_id"] for line in lines_of(done.stdout)} == {batch_id}
    assert done.stderr.count("is no ingested event") == 2 and "Traceback" not in done.stderr
    assert int(client.get(malformed_key(STREAM, "fresh")) or 0) == 2
    assert [group["name"] for group in client.xinfo_groups(STREAM)] == [b"fresh"]


def test_limit_stops_after_acknowledging_its_last_batch_and_the_python_iterator_resumes_after_it(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    store([list(generate_traces(3, seed=n)) for n in range(3)], database_url)
    batch_ids = [event["batch_id"] for event in stream_events(redis_url)]  # in the order they were announced

    once = lines_of(cli("follow", "--from-start", "--limit", "1", "--batches").stdout)
    rest = [batch.batch_id for batch in follow_ingested("follow", "python", idle_exit_s=2)]

    assert [line["batch_id"] for line in once] == batch_ids[:1]
    assert [str(batch_id) for batch_id in rest] == batch_ids[1:]
    assert scalar(database_url, "SELECT count(*) FROM trace") == 9


def lines_read_by_group(client: redis.Redis, group: str = "follow") -> int:
    """Entries the group has read so far (0 while it does not exist yet)."""
    try:
        groups = client.xinfo_groups(STREAM)
    except redis.ResponseError:
        return 0
    return sum(int(g["entries-read"] or 0) for g in groups if g["name"] == group.encode())


def test_ctrl_c_stops_follow_cleanly_with_nothing_half_acknowledged(
    worker_process: WorkerProcess, database_url: str, redis_url: str
) -> None:
    store([list(generate_traces(3))], database_url)
    command = cli_command("follow", "--from-start", "--batches")
    following = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: lines_read_by_group(client) == 1 and pending(client) == 0, what="follow to hand the batch over")
    following.send_signal(signal.SIGINT)
    out, err = following.communicate(timeout=30)

    assert following.returncode == 130 and "Traceback" not in err, err
    assert len(lines_of(out)) == 1
    assert pending(client) == 0  # the written batch was acknowledged, nothing else held
