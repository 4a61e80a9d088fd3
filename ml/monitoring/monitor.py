"""The monitor job, ``python -m ml monitor``: the monitoring report of the prediction store.

It reads a window of stored predictions, builds the report
(:func:`ml.monitoring.report.build_report`, with the same minimum window as the API),
saves it in the store's ``monitoring_reports`` table (:mod:`ml.monitoring.reports`),
where ``GET /monitoring`` and the ``/metrics`` gauges find it, and writes
``monitoring.json`` plus PNG plots of the drift. The job runs in its own pod (a CronJob),
so it may draw with matplotlib; no serving worker imports this module.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ml.monitoring import drift
from ml.monitoring.report import MIN_LABELLED, MIN_ROWS, build_report
from ml.spec import config


def save_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """PSI per feature (bars, with the 0.10 / 0.25 band lines) and the score's bins."""
    if not report.get("drift"):
        return []
    import matplotlib
    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    features = report["drift"]["features"]
    names = sorted(features, key=lambda n: features[n]["psi"])
    values = [features[n]["psi"] for n in names]
    colours = ["tab:green" if v < drift.STABLE else "tab:orange" if v <= drift.WATCH
               else "tab:red" for v in values]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(names) + 1)))
    ax.barh(names, values, color=colours)
    for line, style in ((drift.STABLE, ":"), (drift.WATCH, "--")):
        ax.axvline(line, color="black", linestyle=style, label=f"{line:.2f}")
    ax.set_xlabel("PSI (CSI) against the training reference")
    ax.set_title(f"Feature drift, {report['window']['rows']} predictions; score PSI "
                 f"{report['drift']['score']['psi']:.3f}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    psi_path = out_dir / "psi_features.png"
    fig.savefig(psi_path, dpi=100)
    plt.close(fig)

    score = report["drift"]["score"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(score["expected"]))
    ax.bar(x - 0.2, score["expected"], width=0.4, label="reference")
    ax.bar(x + 0.2, score["actual"], width=0.4, label="window")
    ax.set_xlabel("score bin (reference deciles; last = missing)")
    ax.set_ylabel("share")
    ax.set_title(f"Score distribution, PSI {score['psi']:.3f} ({score['band']})")
    ax.legend()
    fig.tight_layout()
    score_path = out_dir / "psi_score.png"
    fig.savefig(score_path, dpi=100)
    plt.close(fig)
    return [psi_path, score_path]


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """``--database-url``, shared by the commands that read the store (:func:`open_store`)."""
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of the prediction store (default: $DATABASE_URL, "
                             "else the SQLite file the API writes)")


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--model``, shared by ``monitor`` and ``retrain``."""
    add_database_argument(parser)
    parser.add_argument("--model", type=Path, default=None,
                        help="model artifact or models dir with LATEST (default: $MODEL_DIR)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml monitor``."""
    add_window_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, default=None, help="the last N predictions")
    group.add_argument("--days", type=float, default=None, help="predictions of the last D days")
    parser.add_argument("--out", type=Path, default=config.REPORTS_DIR / "monitoring",
                        help="directory for monitoring.json and the plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-store", action="store_true",
                        help="do not save the report in the store (only monitoring.json)")
    parser.add_argument("--min-rows", type=int, default=None,
                        help="below this many predictions the report has counts only "
                             f"(default: $MONITORING_MIN_ROWS, else {MIN_ROWS})")
    parser.add_argument("--min-labelled", type=int, default=None,
                        help="below this many labelled predictions, no outcome metrics "
                             f"(default: $MONITORING_MIN_LABELLED, else {MIN_LABELLED})")


def minimums(args: argparse.Namespace) -> tuple[int, int]:
    """``(min_rows, min_labelled)``: the options, else the environment (the API's
    ConfigMap, so job and API apply the same minimum window), else the defaults."""
    def pick(given: int | None, name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        try:
            value = given if given is not None else int(text) if text else default
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1:
            raise ValueError(f"the minimum window ({name}) must be at least 1, got {value}")
        return value
    return (pick(args.min_rows, "MONITORING_MIN_ROWS", MIN_ROWS),
            pick(args.min_labelled, "MONITORING_MIN_LABELLED", MIN_LABELLED))


def open_store(url: str | None) -> Any:
    """The prediction store at ``url``, ``$DATABASE_URL`` or the API's default."""
    from ml.monitoring.store import PredictionStore, default_url

    return PredictionStore(url or os.environ.get("DATABASE_URL") or default_url(),
                           retry_seconds=0)


def run(args: argparse.Namespace) -> int:
    """Build the report from the store, write JSON and plots, print a summary."""
    from ml.monitoring.reports import save_report
    from ml.serving.artifact import read_card

    if args.last is not None and args.last < 1 or args.days is not None and args.days <= 0:
        raise ValueError("--last and --days must be positive")
    min_rows, min_labelled = minimums(args)
    card = read_card(args.model or config.models_dir())
    window = {"last": args.last} if args.last else {"days": args.days} if args.days else {}
    store = open_store(args.database_url)
    try:
        rows = store.window(last=args.last, days=args.days)
        report = build_report(card, rows, window, min_rows, min_labelled)
        report_id = None if args.no_store else save_report(store, report)
    finally:
        store.dispose()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitoring.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plots = [] if args.no_plots else save_plots(report, args.out / "plots")
    summary = report.get("summary") or {}
    print(json.dumps({"report_id": report_id, "rows": len(rows),
                      "note": report.get("note"), "score_psi": summary.get("score_psi"),
                      "max_feature_psi": summary.get("max_feature_psi"),
                      "features_to_act_on": summary.get("features_to_act_on", []),
                      "report": str(args.out / "monitoring.json"),
                      "plots": [str(p) for p in plots]}))
    return 0
