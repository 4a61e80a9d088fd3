"""Training run: data → search → calibration → threshold → refit → evaluation → artifact.

Refit policy: the search, the calibration and the threshold use train + validation only,
through out-of-fold predictions of k-fold CV on those rows (ml.training.tune); the chosen
configuration is then refitted on train + validation (80 % of the rows), and the test
part (20 %) is scored once, by the final report. The repeated CV that measures
variability runs on all rows, with the threshold held fixed.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from ml.spec import config

from ml.monitoring import drift

from ml.serving import signing
from ml.serving.artifact import library_versions, read_card
from ml.training import evaluate, tune
from ml.training.publish import git_commit, new_version, provenance, save_artifact
from ml.training.data import Dataset, load_dataset, split
from ml.training.pipeline import BLEND, FAMILIES
from ml.spec.schema import CATEGORICAL, DatasetSpec

log = logging.getLogger(__name__)

# PD bands of the risk grades: upper bounds, exclusive except the last.
GRADES = (
    {"grade": "A", "max_pd": 0.05, "label": "very low risk"},
    {"grade": "B", "max_pd": 0.10, "label": "low risk"},
    {"grade": "C", "max_pd": 0.20, "label": "moderate risk"},
    {"grade": "D", "max_pd": 0.35, "label": "elevated risk"},
    {"grade": "E", "max_pd": 0.50, "label": "high risk"},
    {"grade": "F", "max_pd": 1.0, "label": "very high risk"},
)

# A forest's fit grows faster than its rows (docs/design.md: what 30,000 rows cost the
# full search). Above this many rows the search, the calibration and the threshold use
# a stratified sample of train + validation (still thousands of out-of-fold scores);
# the chosen model is refitted on all of it.
SEARCH_MAX_ROWS = 5000
# The variability CV repeats only as often as keeps it near this many scored rows: all
# 5 repeats on the shipped 1,000 rows, one on 10,000 or more, where the folds are large
# enough for tight bands.
CV_MAX_ROWS = 10000


@dataclass
class TrainOptions:
    """What to train on and how hard to try."""

    data: Path = config.DEFAULT_DATA
    spec: Path = config.DEFAULT_SPEC
    out: Path = config.MODELS_DIR
    seed: int = config.DEFAULT_SEED
    families: tuple[str, ...] = FAMILIES
    cv_repeats: int = 5
    n_jobs: int = 2
    plots: bool = True


class Stages:
    """Logs each stage with the seconds since the run began, so progress is visible."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def done(self, what: str, *args: Any) -> None:
        """Log that a stage finished."""
        log.info("[%5.1fs] " + what, time.perf_counter() - self.start, *args)


def train(options: TrainOptions) -> tuple[Path, dict[str, Any]]:
    """Run the whole training and write the artifact; returns its directory and card.

    OpenMP (HistGradientBoosting, a member of the usual blend) gets one thread in this
    process, where the refit, the test scoring and the fast-path check run: the
    parallel stages already use ``n_jobs`` worker processes, and on a busy machine
    spinning OpenMP threads slowed a boosting fit by orders of magnitude (figures in
    ``docs/design.md``; the model is bit-identical either way).
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train(options)


def _train(options: TrainOptions) -> tuple[Path, dict[str, Any]]:
    stages = Stages()
    key = signing.signing_key()  # before minutes of training: fail fast without a key
    spec = DatasetSpec.load(options.spec)
    data = load_dataset(options.data, spec)
    parts = split(data, options.seed)
    stages.done("data: %d rows validated against %s, split %d/%d/%d", len(data.y),
                Path(options.spec).name, len(parts.y_train), len(parts.y_val), len(parts.y_test))

    X_fit = pd.concat([parts.X_train, parts.X_val])
    y_fit = np.concatenate([parts.y_train, parts.y_val])
    X_search, y_search = sample_rows(X_fit, y_fit, SEARCH_MAX_ROWS, options.seed)
    candidates = tune.search(spec, X_search, y_search, options.seed, options.families,
                             options.n_jobs)
    best = tune.select(candidates)
    stages.done("search: %s wins with out-of-fold AUC %.4f (%d-fold CV on %d rows of "
                "train+validation)", best.family, best.oof_auc, tune.SEARCH_FOLDS,
                len(y_search))

    calibration, calibration_scores, p_oof = tune.choose_calibration(spec, best, y_search,
                                                                     options.seed)
    threshold = tune.choose_threshold(spec.cost, y_search, p_oof)
    stages.done("calibration %s, threshold %.3f (Bayes %.3f, empirical minimum %.3f)",
                calibration, threshold["threshold"], threshold["bayes_threshold"],
                threshold["empirical_cost_minimum"])

    model = tune.make_model(spec, best.family, best.params, calibration, options.seed)
    model.fit(X_fit, y_fit)
    p_test = model.predict_proba(parts.X_test)[:, 1]
    test = evaluate.classification_metrics(
        parts.y_test, p_test, threshold["threshold"], spec.cost,
        labels=(spec.target.negative or "negative", spec.target.positive))
    stages.done("refit on train+validation; test AUC %.4f, cost %.3f", test["roc_auc"],
                test["expected_cost"])

    unfitted = tune.make_model(spec, best.family, best.params, calibration, options.seed)
    repeats = max(1, min(options.cv_repeats, CV_MAX_ROWS // len(data.y)))
    cv, oof = evaluate.repeated_cv(unfitted, data.X, data.y, threshold["threshold"], spec.cost,
                                   options.seed, n_repeats=repeats, n_jobs=options.n_jobs)
    stages.done("repeated CV %dx5: AUC %.4f ± %.4f, cost %.3f ± %.3f", repeats,
                cv["roc_auc_mean"], cv["roc_auc_std"], cv["expected_cost_mean"],
                cv["expected_cost_std"])

    report = {
        "test": test,
        "cv": cv,
        "fairness": evaluate.fairness(parts.X_test, spec, parts.y_test, p_test,
                                      threshold["threshold"]),
        "fairness_all_rows_out_of_fold": evaluate.fairness(data.X, spec, data.y, oof,
                                                           threshold["threshold"]),
        "out_of_fold": {"folds": tune.SEARCH_FOLDS, "calibration": calibration_scores,
                        **threshold},
        "search": [{"family": c.family, "best_params": c.params, "oof_auc": c.oof_auc,
                    "configs_tried": c.n_configs} for c in candidates],
    }
    card = build_card(spec, data, model, options, best, calibration, threshold["threshold"],
                      report, X_fit, oof, parts.X_test, p_test)
    card["provenance"] = provenance(key, data.sha256, card["git_commit"])

    def extras(directory: Path) -> None:  # written before signing: the manifest lists them
        if options.plots:
            evaluate.save_plots(parts.y_test, p_test, threshold["threshold"],
                                directory / "plots", title="(test)")
        (directory / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")

    # The compiled serving model is checked against sklearn on every row of the data.
    directory = save_artifact(model, card, options.out, check_frame=data.X, key=key,
                              extras=extras)
    card = read_card(directory)  # as written: completed with the files' names and signer
    stages.done("artifact %s written and signed by key %s", directory,
                card["provenance"]["signer_key_id"])
    return directory, card


def build_card(spec: DatasetSpec, data: Dataset, model: Any, options: TrainOptions,
               best: tune.Candidate, calibration: str, threshold: float,
               report: dict[str, Any], X_fit: pd.DataFrame, oof: np.ndarray,
               X_test: pd.DataFrame, p_test: np.ndarray) -> dict[str, Any]:
    """The model card: provenance, schema, model, threshold, metrics, references, self-test."""
    created = datetime.now(timezone.utc)
    example_row = X_test.iloc[[int(np.argmin(np.abs(p_test - np.median(p_test))))]]
    example = record_from_row(example_row.iloc[0], spec)
    # A retrained challenger keeps its champion's configuration: no search, no oof.
    searched = f"{len(best.oof)} rows of " if best.oof is not None else ""
    return {
        "name": spec.name,
        "version": new_version(created),
        "created_at": created.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "seed": options.seed,
        "data": {"file": Path(data.path).name, "sha256": data.sha256, "rows": int(len(data.y)),
                 "positive_rate": float(data.y.mean())},
        "spec": spec.to_dict(),
        "libraries": library_versions(),
        "model": {"family": best.family, "params": best.params,
                  "description": describe_model(best.family, best.params),
                  "calibration": calibration,
                  "selection": f"highest out-of-fold ROC AUC, {tune.SEARCH_FOLDS}-fold "
                               f"stratified CV on {searched}train + validation",
                  "refit": "chosen configuration refitted on train + validation (80 %)"},
        "threshold": threshold,
        "cost": vars(spec.cost).copy(),
        "grades": list(GRADES),
        "metrics": {"test": report["test"], "cv": report["cv"], "fairness": report["fairness"]},
        "reference": {**drift.build_reference(data.X, spec, oof),
                      "baseline": baseline(X_fit, spec)},
        "example": example,
        "self_test": {"record": example,
                      "probability_of_default": float(model.predict_proba(example_row)[0, 1])},
    }


def sample_rows(X: pd.DataFrame, y: np.ndarray, most: int,
                seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A stratified sample of at most ``most`` rows (all of them when there are fewer)."""
    if len(y) <= most:
        return X, y
    X_sample, _, y_sample, _ = train_test_split(X, y, train_size=most, stratify=y,
                                                random_state=seed)
    return X_sample, y_sample


def describe_model(family: str, params: dict[str, Any]) -> str:
    """The model in words for the card and the docs: the family, or a blend's members.

    A blend's ``params`` are keyed by member family (see ml.training.pipeline.BLEND), so the
    readers of the card need not know that convention to say what was served.
    """
    if family == BLEND:
        return "soft-voting blend (mean PD) of " + " + ".join(params)
    return family


def baseline(X: pd.DataFrame, spec: DatasetSpec) -> dict[str, Any]:
    """The typical applicant: median of each numeric feature, most frequent category."""
    out: dict[str, Any] = {}
    for f in spec.features:
        column = X[f.name].dropna()
        if f.kind == CATEGORICAL:
            out[f.name] = str(column.mode().iloc[0])
        else:
            value = float(column.median())
            out[f.name] = int(round(value)) if f.integer else value
    return out


def record_from_row(row: pd.Series, spec: DatasetSpec) -> dict[str, Any]:
    """A JSON-ready API record from one validated row (integers as int, missing as None)."""
    record: dict[str, Any] = {}
    for f in spec.features:
        value = row[f.name]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            record[f.name] = None
        elif f.kind == CATEGORICAL:
            record[f.name] = str(value)
        else:
            record[f.name] = int(value) if f.integer else float(value)
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml train``."""
    parser.add_argument("--data", type=Path, default=config.DEFAULT_DATA, help="CSV file")
    parser.add_argument("--spec", type=Path, default=config.DEFAULT_SPEC, help="dataset spec")
    parser.add_argument("--out", type=Path, default=config.models_dir(), help="models directory")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--cv-repeats", type=int, default=5, help="repeats of 5-fold CV")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--no-plots", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Train from parsed CLI arguments and print the summary."""
    options = TrainOptions(data=args.data, spec=args.spec, out=args.out, seed=args.seed,
                           families=tuple(args.families), cv_repeats=args.cv_repeats,
                           n_jobs=args.n_jobs, plots=not args.no_plots)
    start = time.perf_counter()
    directory, card = train(options)
    seconds = time.perf_counter() - start
    print(evaluate.summary(card["metrics"]))
    print(f"model {card['model']['description']} ({card['model']['calibration']} calibration), "
          f"threshold {card['threshold']:.3f}, version {card['version']}")
    print(f"artifact {directory}  (trained in {seconds:.1f} s)")
    return 0
