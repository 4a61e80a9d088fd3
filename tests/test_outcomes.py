"""The monitoring metrics in numpy (ml.monitoring.outcomes) against scikit-learn and scipy,
the references the training report uses, to 1e-12."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from ml.monitoring import outcomes
from ml.spec.schema import CostMatrix
from ml.training import evaluate

TOLERANCE = 1e-12
COST = CostMatrix(approve_bad=5.0, decline_good=1.0)


def _case(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes and scores: continuous, heavily tied, separable, extreme and tiny cases."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[:2] = [True, False]  # both classes
    if name == "continuous":
        p = np.clip(rng.beta(2, 5, n) + 0.2 * y, 0, 1)
    elif name == "ties":
        p = rng.integers(0, 7, n) / 6.0  # a handful of distinct scores: many ties
    elif name == "separable":
        p = np.where(y, rng.uniform(0.6, 1, n), rng.uniform(0, 0.4, n))
    elif name == "extremes":
        p = rng.choice([0.0, 1e-17, 0.5, 1 - 1e-17, 1.0], n)
    else:  # "constant"
        p = np.full(n, 0.3)
    return y.astype(int), p


CASES = [(name, seed) for name in ("continuous", "ties", "separable", "extremes", "constant")
         for seed in range(4)]


@pytest.mark.parametrize("name,seed", CASES)
def test_ranking_metrics_equal_sklearn_and_scipy(name, seed):
    y, p = _case(name, seed)
    assert outcomes.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=TOLERANCE)
    assert outcomes.ks_statistic(y, p) == pytest.approx(
        ks_2samp(p[y == 1], p[y == 0]).statistic, abs=TOLERANCE)


@pytest.mark.parametrize("name,seed", CASES)
def test_probability_metrics_equal_sklearn(name, seed):
    y, p = _case(name, seed)
    assert outcomes.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=TOLERANCE)
    clipped = np.clip(p, 1e-15, 1 - 1e-15)  # as the training report calls it
    assert outcomes.log_loss(y, p) == pytest.approx(log_loss(y, clipped, labels=[0, 1]),
                                                    abs=TOLERANCE)


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 1.01])
@pytest.mark.parametrize("name,seed", CASES[::3])
def test_decision_metrics_equal_the_training_reports(name, seed, threshold):
    y, p = _case(name, seed)
    ours = outcomes.decision_metrics(y, p, threshold, COST)
    reference = evaluate.classification_metrics(y, p, threshold, COST)
    assert set(ours) <= set(reference)
    for key, value in ours.items():
        if isinstance(value, float):
            assert value == pytest.approx(reference[key], abs=TOLERANCE), key
        else:
            assert value == reference[key], key


@pytest.mark.parametrize("metric", [outcomes.roc_auc, outcomes.ks_statistic])
def test_ranking_metrics_refuse_a_single_class(metric):
    with pytest.raises(ValueError, match="both classes"):
        metric(np.array([1, 1, 1]), np.array([0.1, 0.5, 0.9]))
