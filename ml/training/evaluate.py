"""Evaluation stage: metrics as plain dicts (JSON-ready), variability, fairness, plots.

Conventions: ``y`` is 1 for the positive class (default, "bad"); ``p`` is P(default);
an applicant is declined when ``p >= threshold``. Expected cost is per applicant,
under the spec's cost matrix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.stats import ks_2samp
from sklearn.base import clone
from sklearn.metrics import (brier_score_loss, confusion_matrix, log_loss,
                             precision_recall_fscore_support, roc_auc_score)
from sklearn.model_selection import RepeatedStratifiedKFold

from ml.monitoring.outcomes import expected_cost  # one definition, numpy only
from ml.spec.schema import CATEGORICAL, CostMatrix, DatasetSpec, Feature


def cost_curve(y: np.ndarray, p: np.ndarray, cost: CostMatrix,
               thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected cost at each threshold (default: a 0.005 grid over (0, 1))."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.005, 1.0, 0.005), 3)
    costs = np.array([expected_cost(y, p >= t, cost) for t in thresholds])
    return thresholds, costs


def best_threshold(y: np.ndarray, p: np.ndarray, cost: CostMatrix) -> float:
    """Threshold on the grid that minimises expected cost on (y, p).

    Ties go to the threshold nearest the Bayes threshold, so a flat cost curve does not
    drag the cut to an arbitrary end.
    """
    thresholds, costs = cost_curve(y, p, cost)
    best = np.flatnonzero(costs <= costs.min() + 1e-12)
    bayes = cost.bayes_threshold
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - bayes))]])


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance between the score distributions of the two classes."""
    return float(ks_2samp(p[y == 1], p[y == 0]).statistic)


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float,
                           cost: CostMatrix, labels: tuple[str, str] = ("good", "bad")
                           ) -> dict[str, Any]:
    """Ranking, probability and decision metrics at ``threshold``.

    Args:
        y: 1 = default.
        p: predicted P(default).
        threshold: decline when ``p >= threshold``.
        cost: the cost matrix.
        labels: names of class 0 and class 1, for the per-class entries.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    decline = p >= threshold
    auc = roc_auc_score(y, p)
    prec, rec, f1, support = precision_recall_fscore_support(y, decline.astype(int),
                                                             labels=[0, 1], zero_division=0)
    per_class = {labels[i]: {"precision": float(prec[i]), "recall": float(rec[i]),
                             "f1": float(f1[i]), "support": int(support[i])} for i in (0, 1)}
    averages = {}
    for avg in ("micro", "macro"):
        ap, ar, af, _ = precision_recall_fscore_support(y, decline.astype(int), average=avg,
                                                        zero_division=0)
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    tn, fp, fn, tp = confusion_matrix(y, decline.astype(int), labels=[0, 1]).ravel()
    approved = ~decline
    return {
        "rows": int(len(y)),
        "roc_auc": float(auc),
        "gini": float(2 * auc - 1),
        "ks": ks_statistic(y, p),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "threshold": float(threshold),
        "per_class": per_class,
        "micro": averages["micro"],
        "macro": averages["macro"],
        "confusion_matrix": {"labels": ["approve", "decline"], "actual_good": [int(tn), int(fp)],
                             "actual_bad": [int(fn), int(tp)]},
        "approval_rate": float(approved.mean()),
        "bad_rate_among_approved": float(y[approved].mean()) if approved.any() else 0.0,
        "expected_cost": expected_cost(y, decline, cost),
        "expected_cost_approve_all": expected_cost(y, np.zeros_like(decline), cost),
        "expected_cost_reject_all": expected_cost(y, np.ones_like(decline), cost),
    }


# A numeric protected attribute with at most this many values is grouped by value.
FEW_GROUPS = 10


def fairness(groups: pd.DataFrame, spec: DatasetSpec, y: np.ndarray, p: np.ndarray,
             threshold: float) -> dict[str, Any]:
    """Approval and bad rates per protected group, and the four-fifths ratio per attribute.

    The ratio is the lowest group approval rate over the highest; below 0.8 the
    four-fifths rule flags possible adverse impact.
    """
    out: dict[str, Any] = {}
    approved = np.asarray(p) < threshold
    y = np.asarray(y)
    for feature in spec.protected:
        if feature.name not in groups:
            continue
        rows = []
        for code, label, mask in protected_groups(feature, groups[feature.name]):
            if not mask.any():
                continue
            rows.append({"group": code, "label": label, "count": int(mask.sum()),
                         "approval_rate": float(approved[mask].mean()),
                         "bad_rate": float(y[mask].mean()),
                         "bad_rate_among_approved":
                             float(y[mask & approved].mean()) if (mask & approved).any() else None})
        rates = [r["approval_rate"] for r in rows]
        ratio = min(rates) / max(rates) if rates and max(rates) > 0 else None
        out[feature.name] = {"label": feature.label, "groups": rows,
                             "approval_rate_ratio": ratio,
                             "four_fifths_rule_met": None if ratio is None else ratio >= 0.8}
    return out


def protected_groups(feature: Feature, column: pd.Series
                     ) -> list[tuple[str, str, np.ndarray]]:
    """``(group, label, row mask)`` of each group of one protected attribute.

    A categorical attribute's groups are its categories. A numeric one (sex coded 1/2,
    an age) would otherwise get no groups at all: it is grouped by value when it has at
    most :data:`FEW_GROUPS` values, else by quartile ("19 to 27", ...).
    """
    if feature.kind == CATEGORICAL:
        codes = column.to_numpy()
        return [(c.code, c.label, codes == c.code) for c in feature.categories]
    values = pd.to_numeric(column, errors="coerce").astype(float)
    distinct = np.unique(values.dropna())
    if len(distinct) <= FEW_GROUPS:
        return [(_number(v), _number(v), (values == v).to_numpy()) for v in distinct]
    bins = pd.qcut(values, 4, duplicates="drop")
    out = []
    for interval in bins.cat.categories:
        mask = (bins == interval).to_numpy()
        text = f"{_number(values[mask].min())} to {_number(values[mask].max())}"
        out.append((text, text, mask))
    return out


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _fold(model: Any, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray,
          threshold: float, cost: CostMatrix) -> tuple[float, float, np.ndarray]:
    fitted = clone(model).fit(X.iloc[train], y[train])
    p = fitted.predict_proba(X.iloc[test])[:, 1]
    return float(roc_auc_score(y[test], p)), expected_cost(y[test], p >= threshold, cost), p


def repeated_cv(model: Any, X: pd.DataFrame, y: np.ndarray, threshold: float,
                cost: CostMatrix, seed: int, n_splits: int = 5, n_repeats: int = 5,
                n_jobs: int = 2) -> tuple[dict[str, Any], np.ndarray]:
    """Mean ± std of AUC and expected cost over repeated stratified k-fold CV.

    ``model`` is the chosen configuration (unfitted, cloned per fold); ``threshold`` is
    held fixed, as it would be in production.

    Returns:
        The summary dict, and the out-of-fold P(default) of every row from the first
        repeat (each row scored once by a model that never saw it).
    """
    folds = list(RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats,
                                         random_state=seed).split(X, y))
    results = Parallel(n_jobs=n_jobs)(
        delayed(_fold)(model, X, y, tr, te, threshold, cost) for tr, te in folds)
    aucs = np.array([r[0] for r in results])
    costs = np.array([r[1] for r in results])
    oof = np.empty(len(y))
    for (_, test), (_, _, p) in zip(folds[:n_splits], results[:n_splits]):
        oof[test] = p
    return {"n_splits": n_splits, "n_repeats": n_repeats,
            "roc_auc_mean": float(aucs.mean()), "roc_auc_std": float(aucs.std(ddof=1)),
            "expected_cost_mean": float(costs.mean()),
            "expected_cost_std": float(costs.std(ddof=1)),
            "roc_auc_folds": aucs.round(6).tolist(),
            "expected_cost_folds": costs.round(6).tolist()}, oof


def save_plots(y: np.ndarray, p: np.ndarray, threshold: float, out_dir: str | Path,
               title: str = "") -> list[Path]:
    """ROC, calibration, confusion-matrix and score-distribution PNGs; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def _save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name="model", plot_chance_level=True)
    ax.set_title(f"ROC {title}".strip())
    _save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, strategy="quantile", ax=ax, name="model")
    ax.set_title(f"Calibration {title}".strip())
    _save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y, (p >= threshold).astype(int), labels=[0, 1],
        display_labels=["good / approve", "bad / decline"], ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    _save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 26)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label="good", density=True)
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label="bad", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("predicted probability of default")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title(f"Score distribution by class {title}".strip())
    _save(fig, "score_distribution.png")
    return paths


def summary(report: dict[str, Any]) -> str:
    """A terminal summary of a training report (test metrics, variability, fairness)."""
    test, cv = report["test"], report["cv"]
    lines = [
        f"test  AUC {test['roc_auc']:.3f}  Gini {test['gini']:.3f}  KS {test['ks']:.3f}  "
        f"Brier {test['brier']:.3f}  log loss {test['log_loss']:.3f}",
        f"      threshold {test['threshold']:.3f}: cost/applicant {test['expected_cost']:.3f} "
        f"(approve-all {test['expected_cost_approve_all']:.3f}, "
        f"reject-all {test['expected_cost_reject_all']:.3f}), approval rate "
        f"{test['approval_rate']:.1%}, bad rate among approved "
        f"{test['bad_rate_among_approved']:.1%}",
        f"      macro F1 {test['macro']['f1']:.3f}  micro F1 {test['micro']['f1']:.3f}  "
        f"confusion good {test['confusion_matrix']['actual_good']} "
        f"bad {test['confusion_matrix']['actual_bad']}",
        f"cv    {cv['n_repeats']}x{cv['n_splits']} AUC {cv['roc_auc_mean']:.3f} ± "
        f"{cv['roc_auc_std']:.3f}  cost {cv['expected_cost_mean']:.3f} ± "
        f"{cv['expected_cost_std']:.3f}",
    ]
    for name, f in report.get("fairness", {}).items():
        ratio = f["approval_rate_ratio"]
        rates = ", ".join(f"{g['group']} {g['approval_rate']:.0%}" for g in f["groups"])
        lines.append(f"fair  {name}: approval {rates}; ratio "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
                     f"{'  (below four-fifths)' if f['four_fifths_rule_met'] is False else ''}")
    return "\n".join(lines)
