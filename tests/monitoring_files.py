"""The monitoring files shipped in deploy/monitoring, read the way Prometheus and Grafana read them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tunix-ingest.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "tunix-ingest.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make system-packages` installs it")

#: Metric names of this product and of Flower in a PromQL expression (functions and labels never match).
_METRIC = re.compile(r"\b(?:tunix_ingest|flower)_[a-z0-9_]+\b")


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def alert_queries() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()]


def metric_names(expression: str) -> set[str]:
    return set(_METRIC.findall(expression))


def referenced_metrics() -> set[str]:
    """Every metric a panel or an alert names."""
    return {name for _, query in panel_queries() + alert_queries() for name in metric_names(query)}


def as_prometheus_query(expression: str, rate_interval: str) -> str:
    """A panel's query as Prometheus runs it: Grafana substitutes its interval variables first."""
    return expression.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)


def promtool(*arguments: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *arguments], cwd=cwd, capture_output=True, text=True, timeout=60)
