"""Per-request cost of a served scorecard against the other families and optbinning itself.

One record through optbinning's ``Scorecard.predict_proba`` (the baseline, frame
building included), and through ``Predictor.predict`` without and with reason codes
for the compiled scorecard and, for comparison in the same run, the logistic
regression and gradient boosting pipelines. Rounds are interleaved and the best
round is reported (shared machines); the load average is printed with the figures.

    python benchmarks/bench_scorecard.py
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from bench_fastpath import fitted_predictor, per_call, record_of

from ml.serving.predictor import Predictor
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC
from ml.spec.schema import DatasetSpec
from ml.training.data import load_dataset, records_to_frame

FAMILIES = {"scorecard": {"estimator__C": 1.0}, "logistic_regression": {"model__C": 0.1},
            "hist_gradient_boosting": {"model__max_leaf_nodes": 15}}


def predictor_of(spec: DatasetSpec, data: Any, family: str) -> tuple[Predictor, Any]:
    """A predictor of a freshly fitted model of ``family``, and the model."""
    return fitted_predictor(spec, data.X, data.y, family, FAMILIES[family])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per figure/round")
    args = parser.parse_args(argv)
    spec = DatasetSpec.load(DEFAULT_SPEC)
    data = load_dataset(DEFAULT_DATA, spec)
    one = [record_of(data.X.iloc[0], spec)]
    predictors = {family: predictor_of(spec, data, family) for family in FAMILIES}
    scorecard = predictors["scorecard"][1]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        figures = {"optbinning predict_proba (1-row frame)": per_call(
            lambda: scorecard.predict_proba(records_to_frame(one, spec)), args.budget)}
        for family, (predictor, _) in predictors.items():
            figures[f"{family}, no reasons"] = per_call(
                lambda p=predictor: p.predict(one, reasons=False), args.budget)
            figures[f"{family}, with reasons"] = per_call(
                lambda p=predictor: p.predict(one, reasons=True), args.budget)
        for key, value in figures.items():
            best[key] = min(best.get(key, value), value)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; best of {args.rounds} interleaved rounds; 1 record")
    base = best["optbinning predict_proba (1-row frame)"]
    for key, seconds in best.items():
        print(f"  {key:42s} {seconds * 1e6:9.1f} µs  ({base / seconds:6.0f}x optbinning)")


if __name__ == "__main__":
    main()
