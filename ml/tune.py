"""Tuning stage: hyper-parameter search on a fixed validation set, calibration, threshold.

Selection criterion: validation ROC AUC. Ranking quality is what calibration and the
decision threshold (both set afterwards) cannot repair, and AUC does not depend on
either. Calibration is then chosen on validation log loss, and the threshold minimises
expected cost on the validation predictions of the calibrated model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from ml.data import Split
from ml.evaluate import best_threshold, expected_cost
from ml.pipeline import FAMILIES, PARAM_GRIDS, build_pipeline
from ml.schema import DatasetSpec

log = logging.getLogger(__name__)

CALIBRATIONS = ("none", "sigmoid", "isotonic")
# A calibration must lower validation log loss by this much to be worth its extra fits.
CALIBRATION_MARGIN = 0.002
CALIBRATION_FOLDS = 3


@dataclass
class Candidate:
    """The best configuration of one model family on the validation set."""

    family: str
    params: dict[str, Any]
    val_auc: float
    n_configs: int
    all_results: list[dict[str, Any]] = field(default_factory=list)


def search(spec: DatasetSpec, split: Split, seed: int, families: tuple[str, ...] = FAMILIES,
           n_jobs: int = 2) -> list[Candidate]:
    """Grid-search each family: fit on train, score ROC AUC on the fixed validation part."""
    X = pd.concat([split.X_train, split.X_val])
    y = np.concatenate([split.y_train, split.y_val])
    fold = PredefinedSplit(np.r_[np.full(len(split.y_train), -1), np.zeros(len(split.y_val))])
    candidates = []
    for family in families:
        grid = GridSearchCV(build_pipeline(spec, family, seed), PARAM_GRIDS[family], cv=fold,
                            scoring="roc_auc", refit=False, n_jobs=n_jobs)
        grid.fit(X, y)
        results = [{"params": p, "val_auc": float(s)}
                   for p, s in zip(grid.cv_results_["params"],
                                   grid.cv_results_["mean_test_score"])]
        candidates.append(Candidate(family, grid.best_params_, float(grid.best_score_),
                                    len(results), results))
        log.info("search %-24s best val AUC %.4f of %d configs %s", family, grid.best_score_,
                 len(results), grid.best_params_)
    return candidates


def select(candidates: list[Candidate]) -> Candidate:
    """The candidate with the highest validation AUC (first family wins a tie)."""
    return max(candidates, key=lambda c: c.val_auc)


def make_model(spec: DatasetSpec, family: str, params: dict[str, Any], calibration: str,
               seed: int) -> Any:
    """The unfitted chosen configuration: the pipeline, calibrated if asked."""
    pipe = build_pipeline(spec, family, seed, params)
    if calibration == "none":
        return pipe
    # ensemble=False: one pipeline refit on all rows plus one calibrator fitted on
    # out-of-fold scores, so the served model is a single pipeline.
    return CalibratedClassifierCV(pipe, method=calibration, cv=CALIBRATION_FOLDS, ensemble=False)


def choose_calibration(spec: DatasetSpec, best: Candidate, split: Split, seed: int
                       ) -> tuple[str, dict[str, dict[str, float]], np.ndarray]:
    """Compare no calibration, Platt (sigmoid) and isotonic on validation log loss.

    Returns the chosen method, the per-method validation figures, and the validation
    predictions of the chosen model (fitted on train only).
    """
    scores, preds = {}, {}
    for method in CALIBRATIONS:
        model = make_model(spec, best.family, best.params, method, seed)
        p = model.fit(split.X_train, split.y_train).predict_proba(split.X_val)[:, 1]
        preds[method] = p
        scores[method] = {"log_loss": float(log_loss(split.y_val, p, labels=[0, 1])),
                          "roc_auc": float(roc_auc_score(split.y_val, p))}
    chosen = "none"
    for method in ("sigmoid", "isotonic"):
        if scores[method]["log_loss"] < scores[chosen]["log_loss"] - CALIBRATION_MARGIN:
            chosen = method
    log.info("calibration: %s (validation log loss %s)", chosen,
             {m: round(s["log_loss"], 4) for m, s in scores.items()})
    return chosen, scores, preds[chosen]


def choose_threshold(spec: DatasetSpec, y_val: np.ndarray, p_val: np.ndarray
                     ) -> dict[str, float]:
    """Cost-minimising threshold on validation predictions, next to the Bayes threshold."""
    chosen = best_threshold(y_val, p_val, spec.cost)
    bayes = spec.cost.bayes_threshold
    return {"threshold": chosen, "bayes_threshold": bayes,
            "validation_cost_at_threshold": expected_cost(y_val, p_val >= chosen, spec.cost),
            "validation_cost_at_bayes": expected_cost(y_val, p_val >= bayes, spec.cost)}
