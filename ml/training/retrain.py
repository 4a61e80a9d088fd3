"""Champion / challenger retraining with the outcomes fed back to the prediction store.

The challenger is the champion's own configuration (family, hyper-parameters,
calibration and threshold from its card: a refresh with more data, not a new search)
refitted on the champion's fitting rows (train + validation of the original split,
re-created with the card's seed) plus a share of the labelled outcomes. Both models are
then scored on the same held-out rows: the original test split plus the held-out share
of the labelled outcomes (``--holdout``, default 30 %), which neither model saw.

Promotion rule: the challenger must lower the **expected cost per applicant** (the
spec's cost matrix, at the card's threshold, the quantity the threshold was chosen to
minimise) by at least ``--margin`` (default 0.005). Only then is it saved as a new
version, signed, and ``LATEST`` moved to it (:func:`ml.training.publish.save_artifact`).
Either way a JSON report is written and printed.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ml.serving import signing
from ml.spec import config

from ml.training import evaluate, tune
from ml.training.publish import load_artifact, provenance, save_artifact
from ml.training.data import Dataset, load_dataset, records_to_frame, split
from ml.training.train import TrainOptions, build_card

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.005
DEFAULT_HOLDOUT = 0.3


def outcomes_frame(rows: list[dict[str, Any]], spec: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Labelled rows back to a validated-style frame (spec feature columns) and y (1 = bad).

    Missing values become NaN like :func:`ml.training.data.validate_frame` makes them; the
    target is 1 where the outcome is the spec's positive class.
    """
    rows = [r for r in rows if r.get("outcome") is not None]
    y = np.array([1 if r["outcome"] == spec.target.positive else 0 for r in rows],
                 dtype=np.int64)
    return records_to_frame([r["features"] for r in rows], spec), y


def split_outcomes(X: pd.DataFrame, y: np.ndarray, holdout: float, seed: int
                   ) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """Labelled outcomes into a fitting part and a held-out part (stratified when it can)."""
    if len(y) < 2 or holdout <= 0:
        return X, y, X.iloc[:0], y[:0]
    stratify = y if min(np.bincount(y, minlength=2)) >= 2 else None
    X_fit, X_out, y_fit, y_out = train_test_split(X, y, test_size=holdout, random_state=seed,
                                                  stratify=stratify)
    return X_fit, y_fit, X_out, y_out


def retrain(model_dir: Path, rows: list[dict[str, Any]], data_path: Path = config.DEFAULT_DATA,
            margin: float = DEFAULT_MARGIN, holdout: float = DEFAULT_HOLDOUT,
            out: Path | None = None, report_only: bool = False) -> dict[str, Any]:
    """Train a challenger, compare it with the champion, promote it if better by ``margin``.

    Args:
        model_dir: the models dir (with ``LATEST``) or the champion artifact.
        rows: stored predictions (``features`` decoded); only labelled ones are used.
        data_path: the original training CSV (its SHA-256 is checked against the card).
        margin: how much lower the challenger's expected cost must be.
        holdout: share of the labelled outcomes held out for the comparison.
        out: where to save a promoted challenger (default: the champion's models dir).
        report_only: decide and report, but never save (in-cluster runs: a promotion
            goes through review and the image build).

    Returns:
        The report: rows used, both models' held-out metrics, the decision and why.
    """
    champion = load_artifact(model_dir)
    card, spec = champion.card, champion.spec
    seed, threshold = int(card["seed"]), float(card["threshold"])
    data = load_dataset(data_path, spec)
    if data.sha256 != card["data"]["sha256"]:
        raise ValueError(f"{data_path} is not the data the champion was trained on "
                         "(SHA-256 differs from its card)")
    parts = split(data, seed)
    X_new, y_new = outcomes_frame(rows, spec)
    X_new_fit, y_new_fit, X_new_out, y_new_out = split_outcomes(X_new, y_new, holdout, seed)

    X_fit = pd.concat([parts.X_train, parts.X_val, X_new_fit], ignore_index=True)
    y_fit = np.concatenate([parts.y_train, parts.y_val, y_new_fit])
    settings = card["model"]
    challenger = tune.make_model(spec, settings["family"], settings["params"],
                                 settings["calibration"], seed).fit(X_fit, y_fit)

    X_eval = pd.concat([parts.X_test, X_new_out], ignore_index=True)
    y_eval = np.concatenate([parts.y_test, y_new_out])
    labels = (spec.target.negative or "negative", spec.target.positive)
    scores = {name: evaluate.classification_metrics(
        y_eval, model.predict_proba(X_eval)[:, 1], threshold, spec.cost, labels)
        for name, model in (("champion", champion.model), ("challenger", challenger))}
    gain = scores["champion"]["expected_cost"] - scores["challenger"]["expected_cost"]
    promote = gain >= margin
    report: dict[str, Any] = {
        "champion": card["version"],
        "criterion": "expected cost per applicant on the held-out rows at the card's "
                     "threshold; promote when the challenger is lower by at least the margin",
        "margin": margin,
        "rows": {"labelled_outcomes": int(len(y_new)), "outcomes_in_fit": int(len(y_new_fit)),
                 "outcomes_held_out": int(len(y_new_out)), "fit": int(len(y_fit)),
                 "held_out": int(len(y_eval)), "original_test": int(len(parts.y_test))},
        "held_out": {name: {k: m[k] for k in ("expected_cost", "roc_auc", "ks", "brier",
                                              "approval_rate", "bad_rate_among_approved")}
                     for name, m in scores.items()},
        "expected_cost_gain": gain,
        "promoted": promote,
    }
    if promote and report_only:
        report["decision"] = (f"challenger better by {gain:.4f} (margin {margin}); not "
                              "saved (--report-only): promote it through review")
        return report
    if promote:
        directory = promote_challenger(challenger, card, spec, data, parts, X_new_fit,
                                       y_new_fit, scores["challenger"], report,
                                       Path(out) if out else champion.path.parent)
        report["new_version"] = directory.name
        report["artifact"] = str(directory)
    report["decision"] = (f"promoted {report['new_version']}: expected cost lower by "
                          f"{gain:.4f} (margin {margin})" if promote else
                          f"kept champion {card['version']}: expected cost gain {gain:.4f} "
                          f"is below the margin {margin}")
    return report


def promote_challenger(model: Any, card: dict[str, Any], spec: Any, data: Dataset, parts: Any,
                       X_new: pd.DataFrame, y_new: np.ndarray, test: dict[str, Any],
                       report: dict[str, Any], root: Path) -> Path:
    """Write the challenger as a new version with a full card (ml.training.train.build_card)."""
    X_all = pd.concat([data.X, X_new], ignore_index=True)
    y_all = np.concatenate([data.y, y_new])
    settings = card["model"]
    unfitted = tune.make_model(spec, settings["family"], settings["params"],
                               settings["calibration"], card["seed"])
    # One repeat of 5-fold CV: the variability figures and the out-of-fold scores the
    # drift reference of the new card is built from.
    cv, oof = evaluate.repeated_cv(unfitted, X_all, y_all, card["threshold"], spec.cost,
                                   card["seed"], n_repeats=1, n_jobs=1)
    p_test = model.predict_proba(parts.X_test)[:, 1]
    combined = Dataset(X=X_all, y=y_all, spec=spec, sha256=data.sha256, path=data.path)
    options = replace(TrainOptions(), seed=int(card["seed"]))
    best = tune.Candidate(settings["family"], settings["params"], float("nan"), 0)
    fairness = evaluate.fairness(parts.X_test, spec, parts.y_test, p_test, card["threshold"])
    new_card = build_card(spec, combined, model, options, best, settings["calibration"],
                          card["threshold"], {"test": test, "cv": cv, "fairness": fairness},
                          pd.concat([parts.X_train, parts.X_val, X_new]), oof, parts.X_test,
                          p_test)
    new_card["model"]["selection"] = (f"champion {card['version']}'s configuration, refitted "
                                      "with fed-back outcomes (python -m ml retrain)")
    new_card["data"]["feedback_rows"] = int(len(y_new))
    new_card["retrain"] = {k: report[k] for k in ("champion", "criterion", "margin", "rows",
                                                  "held_out", "expected_cost_gain")}
    key = signing.signing_key()
    new_card["provenance"] = provenance(key, data.sha256, new_card["git_commit"])
    return save_artifact(model, new_card, root, check_frame=combined.X, key=key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml retrain``."""
    from ml.monitoring.monitor import add_window_arguments

    add_window_arguments(parser)
    parser.add_argument("--data", type=Path, default=config.DEFAULT_DATA,
                        help="the original training CSV")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="expected-cost improvement per applicant needed to promote")
    parser.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT,
                        help="share of labelled outcomes held out for the comparison")
    parser.add_argument("--report-only", action="store_true",
                        help="compare and report, never save a new version")
    parser.add_argument("--report", type=Path, default=config.REPORTS_DIR / "retrain.json",
                        help="where to write the JSON report")


def run(args: argparse.Namespace) -> int:
    """Read labelled outcomes from the store, retrain, compare, maybe promote, report."""
    from ml.monitoring.monitor import open_store

    if not 0 <= args.holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    store = open_store(args.database_url)
    try:
        rows = store.window(labelled_only=True)
    finally:
        store.dispose()
    report = retrain(args.model or config.models_dir(), rows, args.data, args.margin,
                     args.holdout, report_only=args.report_only)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("decision", "promoted", "expected_cost_gain")}
                     | {"report": str(args.report)}))
    return 0
