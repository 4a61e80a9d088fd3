"""Champion / challenger retraining with the outcomes fed back to the prediction store.

The challenger is the champion's own configuration (family, hyper-parameters,
calibration and threshold from its card: a refresh with more data, not a new search)
refitted on the champion's fitting rows (train + validation of the original split,
re-created with the card's seed) plus a share of the labelled outcomes. Both models are
then scored on the same held-out rows: the original test split plus the held-out share
of the labelled outcomes (``--holdout``, default 30 %), which neither model saw.

Rule: the challenger must lower the **expected cost per applicant** (the spec's cost
matrix, at the card's threshold, the quantity the threshold was chosen to minimise) by at
least ``--margin`` (default 0.005). Only then is it saved as a new signed version beside
the champion (or under ``--out``). ``LATEST`` never moves here: a promotion proposal
(both artifacts with their hashes and signer, both models' held-out metrics, the decision
and why, the command that applies it) is written as a file (``--proposal``) and as a
row of the prediction store (:mod:`ml.monitoring.proposals`); once reviewed,
``python -m ml promote`` applies it (:mod:`ml.training.promote`).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ml.serving import signing
from ml.serving.artifact import read_card
from ml.spec import config

from ml.training import evaluate, tune
from ml.training.data import Dataset, load_dataset, records_to_frame, split
from ml.training.promote import PROPOSAL_FORMAT, PROPOSAL_KIND, METRICS, artifact_summary
from ml.training.publish import load_artifact, provenance, save_artifact
from ml.training.train import TrainOptions, build_card

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.005
DEFAULT_HOLDOUT = 0.3
DEFAULT_PROPOSAL = config.REPORTS_DIR / "promotion.json"
CRITERION = ("expected cost per applicant on the held-out rows at the card's threshold; "
             "promote when the challenger is lower by at least the margin")


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
            out: Path | None = None, report_only: bool = False,
            proposal_path: Path | None = None) -> dict[str, Any]:
    """Train a challenger, compare it with the champion, and propose; never move LATEST.

    Args:
        model_dir: the models dir (with ``LATEST``) or the champion artifact.
        rows: stored predictions (``features`` decoded); only labelled ones are used.
        data_path: the original training CSV (its SHA-256 is checked against the card).
        margin: how much lower the challenger's expected cost must be.
        holdout: share of the labelled outcomes held out for the comparison.
        out: the models dir to save a better challenger in (default: the champion's).
        report_only: decide and propose, but never save (a run without the signing key).
        proposal_path: where the proposal will be written (for its ``apply`` command).

    Returns:
        The proposal (:func:`build_proposal`).
    """
    champion = load_artifact(model_dir)
    card, spec = champion.card, champion.spec
    data = load_dataset(data_path, spec)
    if data.sha256 != card["data"]["sha256"]:
        raise ValueError(f"{data_path} is not the data the champion was trained on "
                         "(SHA-256 differs from its card)")
    parts = split(data, int(card["seed"]))
    fitted = fit_challenger(champion, parts, rows, holdout)
    gain = fitted.scores["champion"]["expected_cost"] - fitted.scores["challenger"]["expected_cost"]
    comparison = {"champion": card["version"], "criterion": CRITERION, "margin": margin,
                  "rows": fitted.rows, "expected_cost_gain": gain,
                  "held_out": {name: {k: m[k] for k in METRICS}
                               for name, m in fitted.scores.items()}}
    root = Path(out) if out else champion.path.parent
    saved = None
    if gain >= margin and not report_only:
        directory = save_challenger(fitted, card, spec, data, parts, comparison, root)
        saved = artifact_summary(directory, read_card(directory))
    champion_summary = artifact_summary(champion.path, card)
    return build_proposal(comparison, spec.name, champion_summary, saved, root, proposal_path)


@dataclass
class Fitted:
    """A challenger fitted with outcomes, and both models' held-out scores."""

    model: Any
    scores: dict[str, dict[str, Any]]
    rows: dict[str, int]
    X_new: pd.DataFrame
    y_new: np.ndarray


def fit_challenger(champion: Any, parts: Any, rows: list[dict[str, Any]],
                   holdout: float) -> Fitted:
    """Refit the champion's configuration on its fitting rows plus the outcomes' fitting
    share, and score both models on the original test split plus the held-out outcomes."""
    card, spec = champion.card, champion.spec
    seed, threshold = int(card["seed"]), float(card["threshold"])
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
    counts = {"labelled_outcomes": len(y_new), "outcomes_in_fit": len(y_new_fit),
              "outcomes_held_out": len(y_new_out), "fit": len(y_fit),
              "held_out": len(y_eval), "original_test": len(parts.y_test)}
    return Fitted(challenger, scores, {k: int(v) for k, v in counts.items()},
                  X_new_fit, y_new_fit)


def build_proposal(comparison: dict[str, Any], model_name: str, champion: dict[str, Any],
                   challenger: dict[str, Any] | None, root: Path,
                   proposal_path: Path | None) -> dict[str, Any]:
    """The promotion proposal: both artifacts (:func:`ml.training.promote.artifact_summary`),
    the comparison, the decision and why, and the command that applies it after review."""
    gain, margin = comparison["expected_cost_gain"], comparison["margin"]
    better = gain >= margin
    if not better:
        why = (f"the expected-cost gain per applicant {gain:.4f} is below the margin "
               f"{margin}: champion {champion['version']} stays")
    elif challenger is None:
        why = (f"the challenger's expected cost per applicant is lower by {gain:.4f} "
               f"(margin {margin}) but it was not saved (--report-only): run retrain "
               "with the signing key to save it, then review that proposal")
    else:
        why = (f"the challenger's expected cost per applicant is lower by {gain:.4f} "
               f"(margin {margin}); saved as {challenger['version']} beside the champion, "
               "served only once this proposal is reviewed and applied")
    apply = None
    if challenger is not None:
        apply = (f"python -m ml promote {proposal_path or DEFAULT_PROPOSAL} "
                 f"--models {root}")
    return {"format": PROPOSAL_FORMAT, "kind": PROPOSAL_KIND,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_name": model_name, "decision": "promote" if better else "keep",
            "why": why, "criterion": comparison["criterion"], "margin": margin,
            "expected_cost_gain": gain, "rows": comparison["rows"],
            "held_out": comparison["held_out"], "champion": champion,
            "challenger": challenger or {"version": None}, "models_dir": str(root),
            "apply": apply}


def save_challenger(fitted: Fitted, card: dict[str, Any], spec: Any, data: Dataset,
                    parts: Any, comparison: dict[str, Any], root: Path) -> Path:
    """Write the challenger as a new signed version with a full card
    (ml.training.train.build_card) beside the champion; ``LATEST`` is left alone."""
    model, X_new, y_new = fitted.model, fitted.X_new, fitted.y_new
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
                          card["threshold"],
                          {"test": fitted.scores["challenger"], "cv": cv, "fairness": fairness},
                          pd.concat([parts.X_train, parts.X_val, X_new]), oof, parts.X_test,
                          p_test)
    new_card["model"]["selection"] = (f"champion {card['version']}'s configuration, refitted "
                                      "with fed-back outcomes (python -m ml retrain)")
    new_card["data"]["feedback_rows"] = int(len(y_new))
    new_card["retrain"] = comparison
    key = signing.signing_key()
    new_card["provenance"] = provenance(key, data.sha256, new_card["git_commit"])
    return save_artifact(model, new_card, root, check_frame=combined.X, key=key,
                         update_latest=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml retrain``."""
    from ml.monitoring.monitor import add_window_arguments

    add_window_arguments(parser)
    parser.add_argument("--data", type=Path, default=config.DEFAULT_DATA,
                        help="the original training CSV")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="expected-cost improvement per applicant needed to propose it")
    parser.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT,
                        help="share of labelled outcomes held out for the comparison")
    parser.add_argument("--out", type=Path, default=None,
                        help="models dir for a better challenger (default: the champion's)")
    parser.add_argument("--report-only", action="store_true",
                        help="compare and propose, never save the challenger")
    # --report: the name of the option before proposals (the same file, a new content).
    parser.add_argument("--proposal", "--report", dest="proposal", type=Path,
                        default=DEFAULT_PROPOSAL, help="where to write the proposal (JSON)")


def run(args: argparse.Namespace) -> int:
    """Read labelled outcomes, retrain, compare, write the proposal to a file and the store."""
    from ml.monitoring import proposals
    from ml.monitoring.monitor import open_store

    if not 0 <= args.holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    store = open_store(args.database_url)
    try:
        rows = store.window(labelled_only=True)
        proposal = retrain(args.model or config.models_dir(), rows, args.data, args.margin,
                           args.holdout, args.out, args.report_only, args.proposal)
        # The file first: it is kept when the store cannot be written (the job then fails).
        args.proposal.parent.mkdir(parents=True, exist_ok=True)
        args.proposal.write_text(json.dumps(proposal, indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")
        proposal_id = proposals.save(store, proposal)
    finally:
        store.dispose()
    print(json.dumps({"decision": proposal["decision"], "why": proposal["why"],
                      "challenger": proposal["challenger"]["version"],
                      "expected_cost_gain": proposal["expected_cost_gain"],
                      "proposal": str(args.proposal), "proposal_id": proposal_id,
                      "apply": proposal["apply"]}))
    return 0
