"""The bench's text report: the figures of one run (`worker.bench.run.measure`) as a table for people."""

from __future__ import annotations

from typing import Any

from worker.bench.export_rates import export_rows


def _pinned_row(pinned: dict[str, Any] | None) -> tuple[str, str]:
    label = "drain / COPY, PostgreSQL on its own core"
    if pinned is None:
        return label, "not measured (one core)"
    return label, (
        f"{pinned['ratio']:.2f} ({pinned['drain_rate']:,.0f} / {pinned['copy_rate']:,.0f} traces/s; PostgreSQL on "
        f"core {pinned['postgresql_core']}, workers on {pinned['worker_cores']}; its CPU per trace "
        f"{pinned['drain_postgresql_us']:.1f} us drain, {pinned['copy_postgresql_us']:.1f} us COPY)"
    )


def bench_table(f: dict[str, Any]) -> str:
    """The figures of one `measure` run as a two-column text table, one figure a line."""
    latency = f["latency_ms"]
    rows = [
        ("traces / batch size / trace size", f"{f['traces']:,} / {f['batch_size']} / {f['trace_bytes']:,} B"),
        ("worker processes / Redis", f"{f['processes']} ({f['pool']}) / {f['redis_mode']}"),
        ("drain rate (queue -> committed+published)", f"{f['drain_rate']:,.0f} traces/s ({f['drain_seconds']:.1f} s)"),
        (f"raw COPY ceiling ({f['processes']} connections)", f"{f['copy_rate']:,.0f} traces/s"),
        (
            "PostgreSQL CPU per trace, drain / raw COPY",
            f"{f['postgresql_cpu_ratio']:.2f} ({f['cpu_us_per_trace']['postgresql']:.1f} us / "
            f"{f['copy_postgresql_us']:.1f} us)",
        ),
        _pinned_row(f["pinned"]),
        ("drain / COPY ratio", f"{f['ratio']:.2f}"),
        (
            f"tunix-rt backend pattern (ORM add_all, {f['processes']} sessions)",
            f"{f['backend_rate']:,.0f} traces/s on {f['backend_traces']:,} of them; "
            f"drain is {f['backend_speedup']:.1f}x",
        ),
        ("enqueue rate (1 producer, validated)", f"{f['enqueue_rate']:,.0f} traces/s"),
        (
            f"HTTP enqueue rate (1 uvicorn, {f['http_clients']} clients)",
            f"{f['http_enqueue_rate']:,.0f} traces/s ({f['http_enqueue_rate'] / f['enqueue_rate']:.2f}x the producer)",
        ),
        (
            f"follow export to a file ({f['follow']['parallel']} consumers)",
            f"{f['follow']['rate']:,.0f} traces/s ({f['follow']['lines']:,} lines, {f['follow']['mib']:,.0f} MiB in "
            f"{f['follow']['seconds']:.1f} s; the command {f['follow']['wall_s']:.1f} s with start-up and idle exit)",
        ),
        (
            f"SELECT ceiling ({f['follow']['parallel']} connections, rows dropped)",
            f"{f['select_rate']:,.0f} traces/s; follow / ceiling {f['follow_ratio']:.2f}",
        ),
        *export_rows(f),
        ("drain rate in 100-trace batches", f"{f['small_batch_rate']:,.0f} traces/s"),
        (
            "latency enqueue->published at half that",
            f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms ({latency['batches']} batches of 100)",
        ),
        (
            "HTTP ?wait until 201 at that load",
            f"p50 {f['http_wait_ms']['p50']:.1f} ms, p99 {f['http_wait_ms']['p99']:.1f} ms; after the batch's event "
            f"p50 {f['http_wait_ms']['after_event_p50']:.1f} ms, p99 {f['http_wait_ms']['after_event_p99']:.1f} ms",
        ),
        (
            "CPU per trace during the drain",
            ", ".join(f"{name} {micros:.0f} us" for name, micros in f["cpu_us_per_trace"].items()),
        ),
        ("worker RSS start -> end", f"{f['rss_start_mib']:.0f} MiB -> {f['rss_end_mib']:.0f} MiB"),
        ("Redis memory per queued batch / its body", f"{f['redis_memory_ratio']:.2f}"),
        ("machine", f["machine"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
