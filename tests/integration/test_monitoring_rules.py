"""The alert rules of deploy/monitoring/alerts.yml fire on the faults they name and stay quiet otherwise, checked
with `promtool test rules` on synthetic series (the same evaluation engine as Prometheus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.monitoring_files import ALERTS, alert_rules, load_yaml, needs_promtool, promtool

#: (alert, input series, minutes to evaluate at, labels the alert must carry; None: it must stay quiet).
#: Series are written as promtool takes them ('a+bxn': start at a, add b, n more samples, one a minute).
TARGET = 'instance="metrics:9808", job="tunix-ingest"'
TARGET_LABELS = {"instance": "metrics:9808", "job": "tunix-ingest"}
CASES: list[tuple[str, dict[str, str], int, dict[str, str] | None]] = [
    ("IngestMetricsDown", {'up{job="tunix-ingest", instance="metrics:9808"}': "0x10"}, 6, {}),
    ("IngestMetricsDown", {'up{job="tunix-ingest", instance="metrics:9808"}': "1x10"}, 6, None),
    ("IngestQueueGrowing", {"tunix_ingest_queue_depth{T}": "20+5x30"}, 20, {}),
    ("IngestQueueGrowing", {"tunix_ingest_queue_depth{T}": "500-10x30"}, 20, None),
    (
        "IngestQueueNearLimit",
        {"tunix_ingest_queue_depth{T}": "900x10", "tunix_ingest_queue_depth_limit{T}": "1000x10"},
        6,
        {},
    ),
    (
        "IngestNoCommitWhileQueued",
        {"tunix_ingest_queue_depth{T}": "5x15", "tunix_ingest_batches_ingested_total{T}": "100x15"},
        12,
        {},
    ),
    (
        "IngestNoCommitWhileQueued",
        {"tunix_ingest_queue_depth{T}": "5x15", "tunix_ingest_batches_ingested_total{T}": "100+3x15"},
        12,
        None,
    ),
    (
        "IngestWorkerNotConsuming",
        {
            'tunix_ingest_worker_last_progress_timestamp_seconds{T, node="w@a"}': "0x15",
            "tunix_ingest_oldest_waiting_seconds{T}": "400x15",
        },
        10,
        {"node": "w@a"},
    ),
    (  # a node that keeps taking tasks while the queue is old (another node is stuck, or load is high)
        "IngestWorkerNotConsuming",
        {
            'tunix_ingest_worker_last_progress_timestamp_seconds{T, node="w@a"}': "0+60x15",
            "tunix_ingest_oldest_waiting_seconds{T}": "400x15",
        },
        10,
        None,
    ),
    ("IngestWorkerHeartbeatGone", {'tunix_ingest_worker_up{T, node="w@a"}': "1 1 0 0 0 0"}, 5, {"node": "w@a"}),
    ("IngestWorkerHeartbeatGone", {'tunix_ingest_worker_up{T, node="w@a"}': "1x6"}, 5, None),
    (
        "IngestBatchesFailing",
        {'tunix_ingest_batches_parked_total{T, state="failed"}': "0 0 1 1 1 1"},
        5,
        {"state": "failed"},
    ),
    ("IngestBatchesFailing", {'tunix_ingest_batches_parked_total{T, state="rejected"}': "0 0 1 1 1 1"}, 5, None),
    ("IngestBodiesMissing", {"tunix_ingest_bodies_missing_total{T}": "0 0 1 1 1 1"}, 5, {}),
    ("IngestLostBatchesResent", {"tunix_ingest_lost_batches_resent_total{T}": "0 0 1 1 1 1"}, 5, {}),
    (
        "IngestUnpublishedBacklog",
        {"tunix_ingest_oldest_unpublished_seconds{T}": "200x10", "tunix_ingest_sweep_bound_seconds{T}": "60x10"},
        7,
        {},
    ),
    (
        "IngestUnpublishedBacklog",
        {"tunix_ingest_oldest_unpublished_seconds{T}": "100x10", "tunix_ingest_sweep_bound_seconds{T}": "60x10"},
        7,
        None,
    ),
    (
        "IngestConsumerLagHigh",
        {'tunix_ingest_consumer_lag{T, group="eval"}': "60000x15", "tunix_ingest_events_maxlen{T}": "100000x15"},
        12,
        {"group": "eval"},
    ),
    (
        "IngestConsumerLagHigh",
        {'tunix_ingest_consumer_lag{T, group="eval"}': "100x15", "tunix_ingest_events_maxlen{T}": "100000x15"},
        12,
        None,
    ),
    (
        "IngestRedisMemoryOverBudget",
        {"tunix_ingest_redis_used_memory_bytes{T}": "5e9x10", "tunix_ingest_redis_memory_budget_bytes{T}": "4.5e9x10"},
        7,
        {},
    ),
]


def _series(name: str) -> str:
    return name.replace("{T}", "{" + TARGET + "}").replace("{T, ", "{" + TARGET + ", ")


@needs_promtool
def test_the_alert_rules_fire_on_the_faults_they_name_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    # The rules without their annotations: promtool compares annotations too, and their wording is not the point.
    groups = load_yaml(ALERTS)
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    yaml = YAML()
    with (tmp_path / "alerts.yml").open("w") as rules_file:
        yaml.dump(groups, rules_file)
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    tests: list[dict[str, Any]] = []
    for alert, series, minutes, labels in CASES:
        expected = [] if labels is None else [{"exp_labels": {**TARGET_LABELS, **labels, "severity": severity[alert]}}]
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": _series(name), "values": values} for name, values in series.items()],
                "alert_rule_test": [{"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": expected}],
            }
        )
    with (tmp_path / "alerts_test.yml").open("w") as test_file:
        yaml.dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}, test_file)
    outcome = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert {alert for alert, *_ in CASES} == set(severity), "every alert has a case"
