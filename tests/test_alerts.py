"""The Prometheus alert rules: valid, unit-tested by promtool (firing and not firing),
and watching the metric names the app really exports."""
from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.mark.parametrize("metric", ["credit_api_psi", "credit_api_score_psi",
                                    "credit_api_store_errors_total"])
def test_alerts_watch_metrics_the_app_exports(make_app, example, tmp_path, metric):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", TESTING=False)
    client = app.test_client()
    client.post("/predict", json=example)
    client.get("/monitoring")
    from prometheus_client import REGISTRY
    families = {family.name for family in REGISTRY.collect()}
    assert metric.removesuffix("_total") in families
    assert metric in RULES.read_text()
