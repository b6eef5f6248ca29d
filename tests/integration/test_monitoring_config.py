"""The monitoring shipped in deploy/monitoring (PRODUCT.md §12): Prometheus' configuration and alert rules pass
promtool, the Grafana dashboard and its provisioning are well formed, and the compose `monitoring` profile is wired
to them. The rules' logic: test_monitoring_rules.py; the metrics: test_monitoring_metrics.py; the live scrape of a
running stack: tests/e2e/test_monitoring_live.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.monitoring_files import (
    ALERTS,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    dashboard,
    load_yaml,
    needs_promtool,
    panel_queries,
    promtool,
)


@needs_promtool
def test_promtool_accepts_the_prometheus_configuration_and_the_alert_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert jobs["tunix-ingest"]["static_configs"][0]["targets"] == ["metrics:9808"]
    assert jobs["flower"]["metrics_path"] == "/metrics"


def test_every_alert_waits_before_firing_and_names_its_severity_and_runbook() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']} has no `for:`"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["runbook"] == f"docs/operations.md#alerts: {rule['alert']}"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    runbook = operations[operations.index("### Alerts") :]
    assert [name for name in names if f"\n| {name} " not in runbook] == []  # a runbook line for each


def test_the_dashboard_is_grafana_json_on_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "tunix-ingest" and board["title"] and board["schemaVersion"] >= 36
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"} and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"] and target["expr"].strip()
    titles = " | ".join(panel["title"] for panel in board["panels"])
    for wanted in (
        "Traces stored / s",
        "latency",
        "Queue depth",
        "Unpublished",
        "Failed",
        "Re-sends",
        "heartbeats",
        "lag",
        "Redis memory",
    ):
        assert wanted in titles, wanted
    assert any("histogram_quantile" in query for _, query in panel_queries())
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"


def test_the_compose_monitoring_profile_is_provisioned_from_deploy_monitoring() -> None:
    checker = str(Path(sys.executable).parent / "check-jsonschema")
    schema = [checker, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")]
    checked = subprocess.run(schema, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    monitoring = {name for name, service in services.items() if service.get("profiles") == ["monitoring"]}
    assert monitoring == {"metrics", "prometheus", "grafana"}
    assert services["metrics"]["command"].startswith("tunix-ingest metrics --address=0.0.0.0 --port=9808")
    mounts = [volume for name in ("prometheus", "grafana") for volume in services[name]["volumes"]]
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), mount
    assert "./deploy/monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/monitoring/grafana/dashboards:/etc/grafana/dashboards:ro" in mounts
    assert DASHBOARD.parent.name == "dashboards"
    probe = services["worker"]["healthcheck"]["test"]
    assert probe[:4] == ["CMD", "tunix-ingest", "probe", "worker"]
    assert "worker@%h" in probe and "worker@%h" in services["worker"]["command"]  # the same node name
