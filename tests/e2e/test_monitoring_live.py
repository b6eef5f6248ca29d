"""The dashboard's and the alerts' queries answered by a real Prometheus (Debian's `prometheus`) scraping a running
stack: a worker, Flower and `tunix-ingest metrics`, on free loopback ports, with the shipped scrape jobs and
rules. Grafana is not packaged for Debian, so its part is the structural test in tests/integration; here every
metric a panel or an alert names is present in the live scrape, and every query returns data."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from ruamel.yaml import YAML

from tests.e2e.conftest import StartWorker
from tests.e2e.test_operations import http_get
from tests.monitoring_files import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_queries,
    as_prometheus_query,
    load_yaml,
    panel_queries,
    referenced_metrics,
)
from tests.polling import wait_for
from worker import app, enqueue_batch
from worker.localstack.ports import free_port
from worker.localstack.processes import ChildProcess, celery_command, cli_command
from worker.localstack.sample_traces import generate_traces

PROMETHEUS = shutil.which("prometheus")
#: Grafana's $__rate_interval for a 1 s scrape: several samples per window.
RATE_INTERVAL = "10s"


class Prometheus:
    """A Prometheus server on a free port with the shipped configuration, its targets and intervals local."""

    def __init__(self, directory: Path, targets: dict[str, str]) -> None:
        config = load_yaml(PROMETHEUS_CONFIG)
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS)]
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "prometheus.yml").open("w") as file:
            YAML().dump(config, file)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        assert PROMETHEUS is not None
        command = [
            PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process = ChildProcess("prometheus", command, directory / "prometheus.log")

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expression)["result"]
        return result


@pytest.fixture
def stack(start_worker: StartWorker, tmp_path: Path) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: `make system-packages` installs Debian's package")
    start_worker("monitored")
    flower_port, metrics_port = free_port(), free_port()
    flower = ChildProcess("flower", celery_command("flower", f"--port={flower_port}"), tmp_path / "flower.log").start()
    metrics = ChildProcess(
        "metrics", cli_command("metrics", "--port", str(metrics_port)), tmp_path / "metrics.log"
    ).start()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {"tunix-ingest": f"127.0.0.1:{metrics_port}", "flower": f"127.0.0.1:{flower_port}"},
    )
    prometheus.process.start()
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{flower_port}/healthcheck")[0] == 200, what="Flower")
        wait_for(lambda: http_get(f"{prometheus.url}/-/ready")[0] == 200, what="Prometheus")

        def flower_saw_a_task() -> bool:
            # Flower counts only events sent after it connected: store batches until it has seen one.
            receipt = enqueue_batch(list(generate_traces(10)), source="monitoring")
            AsyncResult(receipt.task_id, app=app).get(timeout=60)
            return "flower_task_runtime_seconds_bucket" in http_get(f"http://127.0.0.1:{flower_port}/metrics")[1]

        wait_for(flower_saw_a_task, timeout=60, interval=0.5, what="Flower to see a task")
        yield prometheus
    finally:
        prometheus.process.stop()
        metrics.stop()
        flower.stop()


def test_every_panel_and_alert_query_answers_from_a_live_scrape_of_a_running_stack(
    stack: Prometheus, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).xgroup_create("traces:ingested", "evaluation", id="0")  # a consumer's lag
    started = time.monotonic()
    wait_for(
        lambda: len([target for target in stack.query("up") if target["value"][1] == "1"]) == 2,
        timeout=30,
        what="both targets scraped",
        explain=lambda: json.dumps(stack.api("targets")["activeTargets"])[:2000],
    )
    for _ in range(3):  # traffic while Prometheus watches, so that rates and latency quantiles have values
        receipt = enqueue_batch(list(generate_traces(10)), source="monitoring")
        AsyncResult(receipt.task_id, app=app).get(timeout=60)
    wanted = referenced_metrics()

    def missing() -> set[str]:
        return {name for name in wanted if not stack.query(f'count({{__name__="{name}"}})')}

    wait_for(
        lambda: not missing(),
        timeout=30,
        interval=1,
        what="every named metric in the scrape",
        explain=lambda: str(missing()),
    )

    for _alert, expression in alert_queries():
        stack.query(expression)  # a malformed query fails here, with Prometheus' reason

    def panels_without_data() -> list[str]:
        # A rate needs two samples in its window: the first scrapes answer with nothing yet.
        queries = [(title, as_prometheus_query(expression, RATE_INTERVAL)) for title, expression in panel_queries()]
        return [f"{title}: {query}" for title, query in queries if not stack.query(query)]

    wait_for(
        lambda: not panels_without_data(),
        timeout=30,
        interval=1,
        what="every panel query to answer with data",
        explain=lambda: "\n".join(panels_without_data()),
    )
    answered_after = time.monotonic() - started

    def rules_evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in stack.api("rules")["groups"] for rule in group["rules"]]
        return rules if all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else []

    rules = wait_for(rules_evaluated, timeout=30, what="the rules evaluated")
    assert {rule["name"] for rule in rules} == {name for name, _ in alert_queries()}
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
    # None pending either (every rule waits a minute or more before it fires, longer than this test runs); one
    # slow scrape under load may make one pending until the next evaluation, so the answer is awaited.
    wait_for(
        lambda: stack.api("alerts")["alerts"] == [],
        timeout=30,
        what="a healthy stack to have no alert",
        explain=lambda: str(stack.api("alerts")["alerts"]),
    )
    stored = stack.query("tunix_ingest_traces_stored")[0]["value"][1]
    median = next(query for title, query in panel_queries() if "latency" in title and "(0.5," in query)
    p50 = stack.query(as_prometheus_query(median, "30s"))[0]["value"][1]
    print(
        f"\nmonitoring: traces stored {stored}, enqueue→published p50 over the last 30 s {float(p50):.3f} s; "
        f"{len(wanted)} metrics named by {len(panel_queries())} panel queries and "
        f"{len(alert_queries())} alerts, all in the live scrape; every panel query answered with data "
        f"{answered_after:.1f} s after the scrapes began; all rules evaluated healthy, no alert active"
    )
