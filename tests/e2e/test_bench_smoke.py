"""A small run of `tunix-ingest bench`: it must complete and report every figure (not a speed test)."""

from __future__ import annotations

import json

from tests.e2e.commands import cli


def test_bench_reports_every_figure_as_json() -> None:
    done = cli("bench", "--traces", "2000", "--batch-size", "500", "--latency-batches", "10", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    for rate in ("drain_rate", "copy_rate", "enqueue_rate", "backend_rate", "small_batch_rate", "http_enqueue_rate"):
        assert figures[rate] > 0
    assert figures["ratio"] == figures["drain_rate"] / figures["copy_rate"]
    assert figures["copy_postgresql_us"] > 0  # PostgreSQL's CPU per trace in the raw COPY, measured
    assert figures["postgresql_cpu_ratio"] == figures["cpu_us_per_trace"]["postgresql"] / figures["copy_postgresql_us"]
    pinned = figures["pinned"]  # the drain with PostgreSQL on a core of its own (this machine has two or more)
    assert pinned["drain_rate"] > 0 and pinned["copy_rate"] > 0 and pinned["drain_postgresql_us"] > 0
    assert pinned["ratio"] == pinned["drain_rate"] / pinned["copy_rate"]
    assert figures["backend_speedup"] == figures["drain_rate"] / figures["backend_rate"]
    assert figures["follow"]["rate"] > 0 and figures["select_rate"] > 0
    assert 0 < figures["follow"]["seconds"] < figures["follow"]["wall_s"]
    assert figures["follow_ratio"] == figures["follow"]["rate"] / figures["select_rate"]
    assert figures["follow"]["traces"] == figures["follow"]["lines"] == 2000  # the drain's, each once
    assert figures["follow"]["parallel"] == 3
    assert figures["backend_traces"] == 2000  # the whole (small) run: the cap is 20,000
    assert 0.5 < figures["redis_memory_ratio"] < 5  # a measured ratio of real memory to real bodies
    assert figures["latency_ms"]["batches"] == 10
    assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"]
    assert figures["http_wait_ms"]["batches"] == 10
    assert 0 < figures["http_wait_ms"]["p50"] <= figures["http_wait_ms"]["p99"]
    assert 0 < figures["http_wait_ms"]["after_event_p50"] <= figures["http_wait_ms"]["after_event_p99"]
    assert figures["redis_mode"] == "single"
    assert figures["rss_start_mib"] > 0 and figures["rss_end_mib"] > 0
    assert figures["traces"] == 2000 and figures["processes"] == 2
    for form in ("parquet", "jsonl"):  # everything the drain stored, each trace once, read from PostgreSQL alone
        export = figures["export"][form]
        assert export["traces"] == 2000 and export["rate"] > 0
        assert export["ratio"] == export["rate"] / figures["select_rate"]


def test_bench_prints_a_table_for_people() -> None:
    done = cli(
        "bench", "--traces", "1000", "--processes", "1", "--latency-batches", "10", "--redis", "sentinel", timeout=300
    )
    assert done.returncode == 0, done.stderr
    for label in (
        "drain rate",
        "raw COPY ceiling (1 connections)",
        "PostgreSQL CPU per trace, drain / raw COPY",
        "drain / COPY, PostgreSQL on its own core",
        "1 (prefork) / sentinel",
        "drain / COPY ratio",
        "enqueue rate",
        "HTTP enqueue rate (1 uvicorn, 4 clients)",
        "HTTP ?wait until 201",
        "p99",
        "drain rate in 100-trace batches",
        "follow export to a file (3 consumers)",
        "SELECT ceiling (3 connections",
        "worker RSS",
        "tunix-rt backend pattern",
        "export to Parquet (--all)",
        "export to JSON Lines (--all)",
        "Redis memory per queued batch",
    ):
        assert label in done.stdout


def test_growth_mode_measures_each_level_and_the_disk_per_million() -> None:
    done = cli(
        "bench", "--traces", "1000", "--batch-size", "500", "--rounds", "2", "--growth", "0,4000", "--json", timeout=300
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    first, grown = figures["levels"]
    assert first["stored_before"] == 0 and first["vs_first"] == 1
    assert grown["stored_before"] >= 4000 and "fill_s" not in first and grown["fill_s"] >= 0
    assert grown["vs_first"] == grown["rate"] / first["rate"]
    for level in (first, grown):
        assert len(level["rates"]) == 2 and level["rate"] > 0
        assert level["postgresql_us"] > 0 and level["workers_us"] > 0
    assert figures["stored_after"] == grown["stored_before"] + 2 * 1000  # each round drained its traces once
    disk = figures["disk_mib_per_million"]
    assert {"table", "TOAST", "pk_trace", "uq_trace_batch_id_position", "ix_trace_derivation_version"} <= set(disk)
    assert disk["table"] > 0 and disk["pk_trace"] > 0
    retention = figures["retention"]  # the oldest tenth of what is stored, deleted with its batches
    assert 0 < retention["traces_deleted"] <= figures["stored_after"] // 10
    assert retention["delete_s"] > 0 and retention["vacuum_s"] > 0
