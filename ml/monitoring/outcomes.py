"""Performance of served predictions on the outcomes fed back, in numpy alone.

``GET /monitoring`` runs in a serving worker, which must not load scikit-learn, scipy or
pandas (the import contracts in ``setup.cfg`` and ``tests/test_boundary.py`` check it), so
the few metrics monitoring reports are written here with numpy. The training side keeps
scikit-learn's and scipy's versions (:mod:`ml.training.evaluate`); the tests hold these
to them within 1e-12.

Conventions as in training: ``y`` is 1 for the positive class (default, "bad"), ``p`` is
P(default), an applicant is declined when ``p >= threshold``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ml.spec.schema import CostMatrix

# Below this many labelled rows of each class, ranking metrics are noise: not reported.
MIN_CLASS_ROWS = 1
# log loss of a probability of exactly 0 or 1 would be infinite; the training report clips
# at the same value.
LOG_LOSS_EPS = 1e-15


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.ravel()]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random bad ranks above a random good.

    Computed as the Mann-Whitney U statistic (ties count one half), which equals the
    trapezoidal area under the ROC curve that scikit-learn reports.
    """
    y = np.asarray(y) == 1
    bad = int(y.sum())
    good = len(y) - bad
    if not bad or not good:
        raise ValueError("ROC AUC needs outcomes of both classes")
    ranks = _average_ranks(np.asarray(p, dtype=float))
    return float((ranks[y].sum() - bad * (bad + 1) / 2.0) / (bad * good))


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the score distributions of the two classes."""
    y = np.asarray(y) == 1
    p = np.asarray(p, dtype=float)
    bad, good = np.sort(p[y]), np.sort(p[~y])
    if not len(bad) or not len(good):
        raise ValueError("KS needs outcomes of both classes")
    points = np.concatenate([bad, good])
    cdf_bad = np.searchsorted(bad, points, side="right") / len(bad)
    cdf_good = np.searchsorted(good, points, side="right") / len(good)
    return float(np.max(np.abs(cdf_bad - cdf_good)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities against the 0/1 outcomes."""
    return float(np.mean((np.asarray(y, dtype=float) - np.asarray(p, dtype=float)) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of the outcomes, probabilities clipped to (0, 1)."""
    y = np.asarray(y) == 1
    p = np.clip(np.asarray(p, dtype=float), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def expected_cost(y: np.ndarray, decline: np.ndarray, cost: CostMatrix) -> float:
    """Average cost per applicant of the decisions ``decline`` (True = declined)."""
    y = np.asarray(y)
    approve_bad = np.sum(~decline & (y == 1))
    decline_good = np.sum(decline & (y == 0))
    return float((cost.approve_bad * approve_bad + cost.decline_good * decline_good) / len(y))


def decision_metrics(y: np.ndarray, p: np.ndarray, threshold: float,
                     cost: CostMatrix) -> dict[str, Any]:
    """Ranking, probability and decision metrics of ``p`` at ``threshold`` on outcomes ``y``.

    The keys and meanings are those of :func:`ml.training.evaluate.classification_metrics`
    (a subset of them), so a monitoring window reads like the training report.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    decline = p >= threshold
    approved = ~decline
    auc = roc_auc(y, p)
    bad = y == 1
    return {
        "roc_auc": auc,
        "gini": float(2 * auc - 1),
        "ks": ks_statistic(y, p),
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "bad_rate_among_approved": float(y[approved].mean()) if approved.any() else 0.0,
        "approval_rate": float(approved.mean()),
        "confusion_matrix": {
            "labels": ["approve", "decline"],
            "actual_good": [int(np.sum(approved & ~bad)), int(np.sum(decline & ~bad))],
            "actual_bad": [int(np.sum(approved & bad)), int(np.sum(decline & bad))]},
        "expected_cost": expected_cost(y, decline, cost),
        "threshold": float(threshold),
    }


def outcome_metrics(rows: list[dict[str, Any]], card: dict[str, Any]) -> dict[str, Any]:
    """Counts of labelled rows and, with both classes present, their decision metrics.

    Decisions are re-derived from the stored PD with the card's threshold, as served.

    Args:
        rows: stored predictions; those with an ``outcome`` are used.
        card: the model card (target spec, threshold, cost matrix).
    """
    target = card["spec"]["target"]
    labelled = [r for r in rows if r.get("outcome") is not None]
    y = np.array([1 if r["outcome"] == target["positive"] else 0 for r in labelled], dtype=int)
    out: dict[str, Any] = {"labelled": len(labelled), "bad": int(y.sum()),
                           "good": int(len(y) - y.sum())}
    if out["bad"] < MIN_CLASS_ROWS or out["good"] < MIN_CLASS_ROWS:
        out["metrics"] = None
        out["note"] = "AUC, KS and the confusion matrix need labelled outcomes of both classes"
        return out
    p = np.array([r["probability_of_default"] for r in labelled], dtype=float)
    out["metrics"] = decision_metrics(y, p, float(card["threshold"]), CostMatrix(**card["cost"]))
    return out
