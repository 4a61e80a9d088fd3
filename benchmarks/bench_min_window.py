"""How much drift and AUC a monitoring window shows by chance alone, by window size.

Windows of N applicants are drawn (without replacement) from the data the model was
trained on, i.e. a population that has not drifted at all, and scored by the served
model; each window gets the monitoring report's figures (:func:`ml.monitoring.drift.compare`
and :func:`ml.monitoring.outcomes.roc_auc`). Printed per N: the median and 95th
percentile of the score PSI and of the largest feature PSI, the share of windows with
at least one feature in the "act" band (a false alarm), and the spread (standard
deviation) of the live AUC. This is what the minimum window (``MONITORING_MIN_ROWS``,
``MONITORING_MIN_LABELLED``) is chosen from; the figures are in docs/design.md.

    python benchmarks/bench_min_window.py --model models [--draws 200]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from ml.monitoring.drift import WATCH, compare
from ml.monitoring.outcomes import roc_auc
from ml.serving.artifact import read_card
from ml.serving.predictor import Predictor
from ml.spec.config import DEFAULT_DATA, models_dir
from ml.spec.schema import DatasetSpec
from ml.training.data import load_dataset
from ml.training.train import record_from_row

SIZES = (10, 30, 50, 100, 200, 500)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(models_dir()), help="artifact or models dir")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    card = read_card(args.model)
    spec = DatasetSpec.from_dict(card["spec"])
    data = load_dataset(args.data, spec)
    records = [record_from_row(row, spec) for _, row in data.X.iterrows()]
    p = np.array([r["probability_of_default"]
                  for r in Predictor.load(args.model).predict(records, reasons=False)])
    y = np.asarray(data.y)
    rng = np.random.default_rng(args.seed)
    print(f"model {card['name']} {card['version']}, {len(records)} applicants, "
          f"{args.draws} windows per size, load {os.getloadavg()[0]:.2f}")
    print("     N  score PSI p50/p95  max feature PSI p50/p95  windows 'act'  AUC sd")
    for n in SIZES:
        score, worst, act, aucs = [], [], 0, []
        for _ in range(args.draws):
            pick = rng.choice(len(records), size=n, replace=False)
            report = compare(card["reference"], [records[i] for i in pick], p[pick])
            score.append(report["score"]["psi"])
            most = max(e["psi"] for e in report["features"].values())
            worst.append(most)
            act += most > WATCH
            if 0 < y[pick].sum() < n:
                aucs.append(roc_auc(y[pick], p[pick]))
        print(f"{n:6d}  {np.median(score):7.3f} / {np.quantile(score, 0.95):5.3f}"
              f"  {np.median(worst):13.3f} / {np.quantile(worst, 0.95):5.3f}"
              f"  {100 * act / args.draws:11.0f} %  {np.std(aucs):6.3f}")


if __name__ == "__main__":
    main()
