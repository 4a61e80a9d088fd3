"""Batch scoring throughput: ``score_file`` against a naive pandas pipeline, in one run.

Makes a portfolio by resampling the German data's lines (1M rows by default, in a
temporary directory), writes it as CSV and as Parquet, then times in the same run:

* baseline: ``pd.read_csv(dtype=str)`` → ``validate_frame`` → sklearn ``predict_proba``
  → decision and grade columns → ``to_csv`` (what one would write first), once;
* ``score_file`` CSV → CSV without reasons, best of ``--repeat``;
* ``score_file`` Parquet → Parquet without reasons, best of ``--repeat``;
* ``score_file`` CSV → CSV with reasons, best of ``--repeat`` (on ``--reasons-rows``).

Targets (issue 13): CSV ≥ 250k rows/s and ≥ 10x the baseline; Parquet at least as fast
as CSV; with reasons ≥ 40k rows/s.

    python benchmarks/bench_score.py [--model DIR] [--rows 1000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.batch.score import score_file
from ml.serving.artifact import library_versions
from ml.serving.predictor import Predictor
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC
from ml.spec.schema import CATEGORICAL, DatasetSpec
from ml.training.data import load_dataset, validate_frame
from ml.training.pipeline import build_pipeline
from ml.training.publish import load_artifact, save_artifact

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


def naive(model_dir: Path, predictor: Predictor, src: Path, out: Path) -> float:
    """The straightforward pandas and sklearn version; returns seconds (model load excluded)."""
    model = load_artifact(model_dir).model
    start = time.perf_counter()
    frame = pd.read_csv(src, dtype=str, keep_default_na=False, skipinitialspace=True)
    X, _ = validate_frame(frame, predictor.spec, require_target=False)
    p = model.predict_proba(X)[:, 1]
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


def best(predictor: Predictor, src: Path, out: Path, repeat: int, reasons: bool,
         chunksize: int) -> dict:
    runs = [score_file(None, src, out, predictor=predictor, progress=False, reasons=reasons,
                       chunksize=chunksize) for _ in range(repeat)]
    return max(runs, key=lambda r: r["rows_per_second"])


def stages(predictor: Predictor, src: Path, out: Path, chunksize: int) -> None:
    """Seconds of each stage of a CSV run without reasons, one stage at a time, one thread."""
    from ml.batch.files import Sink, open_source
    from ml.batch.score import _Scorer

    spent = dict.fromkeys(("read and UTF-8 check", "convert and score", "write"), 0.0)
    reader = open_source(src, "csv", chunksize)
    scorer = _Scorer(predictor, reader.names, reasons=False)
    sink = Sink(out, "csv", scorer.output_schema(reader.schema))
    batches = iter(reader)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        spent["read and UTF-8 check"] += time.perf_counter() - start
        if batch is None:
            break
        start = time.perf_counter()
        table, _ = scorer.score(batch)
        spent["convert and score"] += time.perf_counter() - start
        start = time.perf_counter()
        sink.write(table)
        spent["write"] += time.perf_counter() - start
    sink.close()
    reader.close()
    total = sum(spent.values())
    print("stages of a CSV run, one at a time: " + ", ".join(
        f"{name} {seconds:.2f} s ({seconds / total:.0%})" for name, seconds in spent.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", type=Path, help="artifact or models dir (default: a new LR)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reasons-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunksize", type=int, default=25_000, help="records per batch")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the naive baseline (to compare batch sizes quickly)")
    parser.add_argument("--stages", action="store_true",
                        help="also time the stages of a CSV run one at a time")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or make_model(tmp / "models")
        predictor = Predictor.load(model_dir)
        src = tmp / "portfolio.csv"
        make_portfolio(src, args.rows)
        # A Parquet export as a warehouse writes one: numbers typed, text as text.
        pq.write_table(pacsv.read_csv(src), tmp / "portfolio.parquet")
        print(f"{args.rows:,} rows, CSV {src.stat().st_size / 1e6:.0f} MB, Parquet "
              f"{(tmp / 'portfolio.parquet').stat().st_size / 1e6:.0f} MB; model "
              f"{predictor.fast.kind} ({predictor.version}); pyarrow {pa.__version__}; load "
              f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")

        if args.no_baseline:
            base_rate = float("nan")
        else:
            base = naive(model_dir, predictor, src, tmp / "naive.csv")
            base_rate = args.rows / base
            print(f"naive pandas read_csv → predict_proba → to_csv    {base:7.2f} s "
                  f"{base_rate:>10,.0f} rows/s")
        csv_run = best(predictor, src, tmp / "out.csv", args.repeat, False, args.chunksize)
        parquet_run = best(predictor, tmp / "portfolio.parquet", tmp / "out.parquet",
                           args.repeat, False, args.chunksize)
        part = tmp / "part.csv"
        head(src, part, args.reasons_rows)
        reasons_run = best(predictor, part, tmp / "out_r.csv", args.repeat, True,
                           args.chunksize)
        for label, run in (("CSV → CSV, no reasons", csv_run),
                           ("Parquet → Parquet, no reasons", parquet_run),
                           (f"CSV → CSV, reasons ({args.reasons_rows:,} rows)", reasons_run)):
            rate = run["rows_per_second"]
            print(f"score_file {label:38s} {run['seconds']:7.2f} s {rate:>10,.0f} rows/s "
                  f"({rate / base_rate:.1f}x the baseline; best of {args.repeat}; "
                  f"{args.chunksize:,}-record batches)")
        if args.stages:
            stages(predictor, src, tmp / "stages.csv", args.chunksize)
        if args.no_baseline:
            return
        check = pd.read_csv(tmp / "out.csv", usecols=["probability_of_default"],
                            nrows=1000)["probability_of_default"].to_numpy()
        reference = pd.read_csv(tmp / "naive.csv", usecols=["probability_of_default"],
                                nrows=1000)["probability_of_default"].to_numpy()
        print(f"first 1,000 PDs agree with the baseline to "
              f"{np.max(np.abs(check - reference)):.1e}")


if __name__ == "__main__":
    main()
