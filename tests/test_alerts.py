"""The Prometheus alert rules: valid, unit-tested by promtool (firing and not firing),
watching the metric names the app really exports, and shipped to OpenShift as the
PrometheusRule generated from them; the Grafana dashboard queries real metrics too."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (make system-deps installs prometheus)")
        pytest.skip("promtool is not installed")
    return path


@pytest.mark.parametrize("args", [("check", "rules", RULES), ("test", "rules", RULE_TESTS)],
                         ids=["check", "unit-tests"])
def test_promtool_accepts_the_rules_and_their_unit_tests(promtool, args):
    result = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True,
                            timeout=60, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_psi_alert_fires_above_the_act_band_of_ml_drift():
    from ml.monitoring.drift import WATCH
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]}
    assert rules["CreditRiskFeatureDrift"]["expr"].endswith(f"> {WATCH}")
    assert rules["CreditRiskScoreDrift"]["expr"].endswith(f"> {WATCH}")


def exported_names(client) -> set[str]:
    """Sample names on the app's /metrics, plus what a family with no sample yet will
    expose (a labelled family before its first child, a report gauge before a report)."""
    from prometheus_client.parser import text_string_to_metric_families
    exported = set()
    for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)):
        exported |= {sample.name for sample in family.samples}
        exported |= {family.name + suffix for suffix in
                     {"counter": ("_total",), "histogram": ("_bucket",)}.get(family.type, ("",))}
    return exported


@pytest.fixture(scope="module")
def exported(make_app, tmp_path_factory, example_record):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path_factory.mktemp('alerts') / 'p.db'}",
                   TESTING=False)
    client = app.test_client()
    client.post("/predict", json=example_record)
    return exported_names(client)


@pytest.fixture(scope="module")
def example_record(trained_model_dir):
    from ml.serving.artifact import read_card
    return read_card(trained_model_dir)["example"]


def rule_metrics() -> set[str]:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    return {m for e in exprs for m in re.findall(r"\bcredit_api_\w+", e)}


@pytest.mark.parametrize("metric", ["credit_api_psi", "credit_api_score_psi",
                                    "credit_api_store_errors_total",
                                    "credit_api_outcome_metric", "credit_api_reference_metric",
                                    "credit_api_monitoring_report_timestamp_seconds",
                                    "credit_api_model_ready"])
def test_alerts_watch_metrics_the_app_exports(exported, metric):
    assert metric in exported
    assert metric in rule_metrics()


def test_every_metric_of_the_rules_is_exported(exported):
    assert rule_metrics() <= exported, rule_metrics() - exported


def test_prometheusrule_manifest_is_generated_from_the_rule_file():
    """One source: k8s/base/prometheusrule.yaml holds alerts.yml's groups, unchanged."""
    script = ROOT / "tools" / "prometheusrule.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((ROOT / "k8s" / "base" / "prometheusrule.yaml").read_text())
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_prometheusrule_check_fails_when_the_manifest_is_stale(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import prometheusrule
    finally:
        sys.path.remove(str(ROOT / "tools"))
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(prometheusrule.render(RULES.read_text()).replace("0.25", "0.3"))
    monkeypatch.setattr(prometheusrule, "TARGET", stale)
    assert prometheusrule.main(["--check"]) == 1
    assert prometheusrule.main([]) == 0 and prometheusrule.main(["--check"]) == 0


DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "credit-risk-api.json"


def test_dashboard_covers_the_service_and_queries_only_exported_metrics(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("traffic", "latency", "errors", "decisions", "pd distribution", "drift"):
        assert topic in titles, topic
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bcredit_api_\w+", e)}
    assert used and used <= exported, used - exported


def test_compose_prometheus_loads_the_rule_file(promtool, tmp_path):
    # Laid out as compose mounts it: the config, the rules and the scrape token side by side.
    for name in ("prometheus.yml", "alerts.yml"):
        (tmp_path / name).write_text((RULES.parent / name).read_text())
    (tmp_path / "metrics-token").write_text("a-token-with-the-metrics-scope\n")
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout + result.stderr
