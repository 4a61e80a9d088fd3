"""Batch scoring throughput: ``score_csv`` against a naive pandas pipeline, CSV to CSV.

Makes a portfolio by resampling the German data's lines (1M rows by default, in a
temporary directory), then times, in the same run:

* baseline: ``pd.read_csv(dtype=str)`` → ``validate_frame`` → ``model.predict_proba``
  → decision and grade columns → ``to_csv`` (what one would write first);
* ``score_csv`` without reasons (the ≥ 200k rows/s target), best of ``--repeat``;
  the baseline runs on the first ``--baseline-rows`` only (it is ~7x slower);
* ``score_csv`` with reasons, on a slice (``--reasons-rows``) to keep the run short.

    python benchmarks/bench_score.py [--model DIR] [--rows 1000000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ml.serving.artifact import library_versions
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC
from ml.training.data import load_dataset, validate_frame
from ml.training.pipeline import build_pipeline
from ml.training.publish import load_artifact, save_artifact
from ml.serving.predictor import Predictor
from ml.spec.schema import CATEGORICAL, DatasetSpec
from ml.batch.score import score_csv

GRADES = [{"grade": g, "max_pd": b} for g, b in
          zip("ABCDEF", (0.05, 0.10, 0.20, 0.35, 0.50, 1.0))]


def make_portfolio(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` lines drawn with replacement from the German data, under its header."""
    lines = DEFAULT_DATA.read_bytes().splitlines(keepends=True)
    header, body = lines[0], np.array(lines[1:], dtype=object)
    pick = np.random.default_rng(seed).integers(0, len(body), size=rows)
    with open(path, "wb") as fh:
        fh.write(header)
        for start in range(0, rows, 100_000):
            fh.write(b"".join(body[pick[start:start + 100_000]]))


def make_model(directory: Path) -> Path:
    """A logistic-regression artifact (the family the trainer picks most often here)."""
    spec = DatasetSpec.load(DEFAULT_SPEC)
    data = load_dataset(DEFAULT_DATA, spec)
    X = data.X
    model = build_pipeline(spec, "logistic_regression", 0, {"model__C": 0.1}).fit(X, data.y)
    example = {f.name: (str(X[f.name].iloc[0]) if f.kind == CATEGORICAL
                        else int(X[f.name].iloc[0])) for f in spec.features}
    baseline = {f.name: (str(X[f.name].mode().iloc[0]) if f.kind == CATEGORICAL
                         else int(X[f.name].median())) for f in spec.features}
    card = {"name": spec.name, "version": "bench-score", "threshold": 0.3, "grades": GRADES,
            "spec": spec.to_dict(), "libraries": library_versions(),
            "reference": {"baseline": baseline}, "example": example,
            "self_test": {"record": example, "probability_of_default":
                          float(model.predict_proba(X.iloc[[0]])[0, 1])}}
    return save_artifact(model, card, directory)


def naive(predictor: Predictor, src: Path, out: Path) -> float:
    """The straightforward pandas version; returns seconds."""
    start = time.perf_counter()
    frame = pd.read_csv(src, dtype=str, keep_default_na=False, skipinitialspace=True)
    X, _ = validate_frame(frame, predictor.spec, require_target=False)
    p = load_artifact(predictor.artifact.path).model.predict_proba(X)[:, 1]
    frame["probability_of_default"] = p
    frame["decision"] = np.where(p >= predictor.threshold, "decline", "approve")
    frame["risk_grade"] = [predictor.grade(v) for v in p]
    frame.to_csv(out, index=False)
    return time.perf_counter() - start


def head(src: Path, dst: Path, rows: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="artifact or models dir (default: a new LR)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reasons-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline-rows", type=int, default=200_000,
                        help="rows for the (slow) naive baseline")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or make_model(tmp / "models")
        predictor = Predictor.load(model_dir)
        src = tmp / "portfolio.csv"
        make_portfolio(src, args.rows)
        size = src.stat().st_size
        print(f"{args.rows:,} rows, {size / 1e6:.0f} MB; model {predictor.fast.kind} "
              f"({predictor.version}); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")

        base_rows = min(args.baseline_rows, args.rows)
        head(src, tmp / "base.csv", base_rows)
        base = naive(predictor, tmp / "base.csv", tmp / "naive.csv")
        base_rate = base_rows / base
        print(f"naive pandas read_csv → predict_proba → to_csv  {base:7.2f} s "
              f"{base_rate:>10,.0f} rows/s  (on the first {base_rows:,} rows)")

        runs = [score_csv(None, src, tmp / "out.csv", predictor=predictor, progress=False,
                          reasons=False) for _ in range(args.repeat)]
        best = max(runs, key=lambda r: r["rows_per_second"])
        speedup = best["rows_per_second"] / base_rate
        print(f"score_csv, no reasons (best of {args.repeat})            "
              f"{best['seconds']:7.2f} s {best['rows_per_second']:>10,.0f} rows/s "
              f"({speedup:.1f}x the baseline)")

        part = tmp / "part.csv"
        head(src, part, args.reasons_rows)
        with_reasons = score_csv(None, part, tmp / "out_r.csv", predictor=predictor,
                                 progress=False, reasons=True)
        print(f"score_csv, with reasons ({args.reasons_rows:,} rows)         "
              f"{with_reasons['seconds']:7.2f} s "
              f"{with_reasons['rows_per_second']:>10,.0f} rows/s")
        check = pd.read_csv(tmp / "out.csv", usecols=["probability_of_default"],
                            nrows=1000)["probability_of_default"].to_numpy()
        reference = pd.read_csv(tmp / "naive.csv", usecols=["probability_of_default"],
                                nrows=1000)["probability_of_default"].to_numpy()
        print(f"first 1,000 PDs agree with the baseline to "
              f"{np.max(np.abs(check - reference)):.1e}")


if __name__ == "__main__":
    main()
