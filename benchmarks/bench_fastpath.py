"""Per-request cost of the predictor's compiled model against sklearn's ``predict_proba``.

For each model family: one record through ``model.predict_proba(one-row DataFrame)``
(the baseline, frame building included), through the compiled fast path alone, and
through ``Predictor.predict`` without and with reason codes; then a 1,000-record batch
both ways. Rounds are interleaved and the best round is reported, because this runs
on shared machines; the load average is printed with the figures.

    python benchmarks/bench_fastpath.py                # fits LR, RF and HGB (pipeline defaults)
    python benchmarks/bench_fastpath.py --model models # also the trained artifact
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ml.serving.artifact import Artifact, library_versions
from ml.serving.predictor import Predictor
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC
from ml.spec.schema import CATEGORICAL, DatasetSpec
from ml.training.compile import compile_model
from ml.training.data import load_dataset, records_to_frame
from ml.training.pipeline import build_pipeline
from ml.training.publish import load_artifact

# Settings from ml.training.pipeline.PARAM_GRIDS (the forest as the trainer picked it on seed 42),
# with the builder's tree counts.
FAMILIES = {
    "logistic_regression": {"model__C": 0.1},
    "random_forest": {"model__max_depth": 8, "model__max_features": 0.3},
    "hist_gradient_boosting": {"model__learning_rate": 0.1, "model__max_leaf_nodes": 15},
}
GRADES = [{"grade": g, "max_pd": b} for g, b in
          zip("ABCDEF", (0.05, 0.10, 0.20, 0.35, 0.50, 1.0))]


def per_call(fn: Callable[[], Any], budget: float) -> float:
    """Median seconds per call over groups of calls filling about ``budget`` seconds."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    group = max(1, int(0.02 / once))
    samples = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 2:
        start = time.perf_counter()
        for _ in range(group):
            fn()
        samples.append((time.perf_counter() - start) / group)
    return statistics.median(samples)


def record_of(row: pd.Series, spec: DatasetSpec) -> dict[str, Any]:
    return {f.name: (str(row[f.name]) if f.kind == CATEGORICAL else int(row[f.name]))
            for f in spec.features}


def fitted_predictor(spec: DatasetSpec, X: pd.DataFrame, y: np.ndarray, family: str,
                     params: dict[str, Any] | None = None) -> tuple[Predictor, Any]:
    """A predictor of a freshly fitted pipeline (``params``, default :data:`FAMILIES`'),
    and the sklearn model it was compiled from."""
    params = FAMILIES[family] if params is None else params
    model = build_pipeline(spec, family, 0, params).fit(X, y)
    example = record_of(X.iloc[0], spec)
    baseline = {f.name: (str(X[f.name].mode().iloc[0]) if f.kind == CATEGORICAL
                         else int(X[f.name].median())) for f in spec.features}
    card = {"name": spec.name, "version": f"bench-{family}", "threshold": 0.3,
            "grades": GRADES, "libraries": library_versions(),
            "reference": {"baseline": baseline}, "example": example,
            "self_test": {"record": example, "probability_of_default":
                          float(model.predict_proba(X.iloc[[0]])[0, 1])}}
    return Predictor(Artifact(card=card, spec=spec, path=Path("."),
                              fast=compile_model(model, spec))), model


def measure(predictor: Predictor, model: Any, records: list[dict],
            budget: float) -> dict[str, float]:
    """Seconds per call of each way of scoring, for one interleaved round."""
    spec = predictor.spec
    one = records[:1]
    batch = records[:1000]
    return {
        "sklearn_1": per_call(lambda: model.predict_proba(records_to_frame(one, spec)), budget),
        "fast_1": per_call(lambda: predictor.fast.predict_records(one), budget),
        "predict_1": per_call(lambda: predictor.predict(one, reasons=False), budget),
        "reasons_1": per_call(lambda: predictor.predict(one, reasons=True), budget),
        "sklearn_1000": per_call(lambda: model.predict_proba(records_to_frame(batch, spec)),
                                 budget),
        "predict_1000": per_call(lambda: predictor.predict(batch, reasons=False), budget),
        "reasons_1000": per_call(lambda: predictor.predict(batch, reasons=True), budget),
    }


def describe(predictor: Predictor, model: Any) -> str:
    if hasattr(model, "voting"):  # the trainer's blend: a VotingClassifier of pipelines
        pipelines = list(model.estimators_)
    else:
        est = getattr(model, "calibrated_classifiers_", [None])[0]
        pipelines = [est.estimator if est is not None else model]
    return predictor.fast.kind + "".join(_size(p.steps[-1][1]) for p in pipelines)


def _size(final: Any) -> str:
    if hasattr(final, "estimators_"):
        depth = max(e.tree_.max_depth for e in final.estimators_)
        return f", {len(final.estimators_)} trees, depth {depth}"
    if hasattr(final, "_predictors"):
        return f", {len(final._predictors)} trees, max_leaf_nodes {final.max_leaf_nodes}"
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="also benchmark this artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per figure/round")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args(argv)

    spec = DatasetSpec.load(DEFAULT_SPEC)
    data = load_dataset(DEFAULT_DATA, spec)
    records = [record_of(data.X.iloc[i], spec) for i in range(len(data.X))]
    predictors = {f: fitted_predictor(spec, data.X, data.y, f) for f in args.families}
    if args.model:
        predictors["trained artifact"] = (Predictor.load(args.model),
                                          load_artifact(args.model).model)
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):  # interleaved: every model in every round
        for name, (predictor, model) in predictors.items():
            figures = measure(predictor, model, records, args.budget)
            old = best.setdefault(name, figures)
            for key, value in figures.items():
                old[key] = min(old[key], value)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; best of {args.rounds} interleaved rounds")
    us = 1e6
    for name, f in best.items():
        print(f"\n{name}: {describe(*predictors[name])}")
        print(f"  1 record   sklearn predict_proba(1-row frame) {f['sklearn_1'] * us:9.0f} µs")
        print(f"             fast path P(default) only          {f['fast_1'] * us:9.1f} µs "
              f"({f['sklearn_1'] / f['fast_1']:.0f}x faster)")
        print(f"             Predictor.predict, no reasons      {f['predict_1'] * us:9.1f} µs "
              f"({f['sklearn_1'] / f['predict_1']:.0f}x faster)")
        print(f"             Predictor.predict, with reasons    {f['reasons_1'] * us:9.1f} µs "
              f"({f['sklearn_1'] / f['reasons_1']:.0f}x faster than sklearn without)")
        print(f"  1000 recs  sklearn (frame + predict_proba)    {f['sklearn_1000'] * 1e3:9.2f} ms")
        print(f"             Predictor.predict, no reasons      {f['predict_1000'] * 1e3:9.2f} ms "
              f"({f['sklearn_1000'] / f['predict_1000']:.1f}x faster)")
        print(f"             Predictor.predict, with reasons    {f['reasons_1000'] * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
