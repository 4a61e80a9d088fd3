"""Evaluation helpers: the fairness report's groups."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.training.evaluate import classification_metrics, fairness, summary
from ml.spec.schema import CATEGORICAL, NUMERIC, Category, CostMatrix, DatasetSpec, Feature, Target

AGE = Feature("age", NUMERIC, "Age", minimum=18, maximum=90, integer=True)
SEX_CODE = Feature("sex", NUMERIC, "Sex", minimum=1, maximum=2, integer=True)
SEX = Feature("sex", CATEGORICAL, "Sex", categories=(Category("f", "F", "Female"),
                                                     Category("m", "M", "Male")))


def _spec(protected: Feature) -> DatasetSpec:
    return DatasetSpec(name="t", target=Target("bad", "1"),
                       features=(Feature("x", NUMERIC, "X"),), protected=(protected,))


@pytest.mark.parametrize("feature, column, groups", [
    (SEX, ["f", "m"] * 50, ["f", "m"]),
    (SEX_CODE, [1.0, 2.0] * 50, ["1", "2"]),
    (AGE, list(range(20, 120)), ["20 to 44", "45 to 69", "70 to 94", "95 to 119"]),
])
def test_every_protected_attribute_gets_groups_whatever_its_kind(feature, column, groups):
    y = np.arange(100) % 3 == 0
    p = np.linspace(0, 1, 100)
    report = fairness(pd.DataFrame({feature.name: column}), _spec(feature), y, p, 0.5)
    rows = report[feature.name]["groups"]
    assert [r["group"] for r in rows] == groups
    assert sum(r["count"] for r in rows) == 100
    assert report[feature.name]["four_fifths_rule_met"] is not None


@pytest.mark.parametrize("ratio, met, flagged", [(0.5, False, True), (0.9, True, False),
                                                 (None, None, False)])
def test_summary_flags_only_a_measured_four_fifths_failure(ratio, met, flagged):
    y = np.arange(100) % 3 == 0
    metrics = classification_metrics(y, np.linspace(0, 1, 100), 0.5, CostMatrix(5, 1))
    cv = {"n_repeats": 1, "n_splits": 5, "roc_auc_mean": 0.7, "roc_auc_std": 0.01,
          "expected_cost_mean": 0.5, "expected_cost_std": 0.01}
    fair = {"sex": {"groups": [], "approval_rate_ratio": ratio, "four_fifths_rule_met": met}}
    text = summary({"test": metrics, "cv": cv, "fairness": fair})
    assert ("below four-fifths" in text) is flagged
