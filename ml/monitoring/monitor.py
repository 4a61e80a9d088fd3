"""Monitoring: drift of the applicants and the score, decision mix, and performance on
the outcomes fed back, for a window of stored predictions.

:func:`build_report` is pure (card + rows in, dict out) and serves both ``GET
/monitoring`` and the batch job ``python -m ml monitor``, which reads the prediction
store and writes ``monitoring.json`` plus PNG plots. Drift: PSI of the score and CSI of
every feature against the model card's reference bins (:mod:`ml.monitoring.drift`), banded
< 0.10 stable, 0.10–0.25 watch, > 0.25 act.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ml.spec import config

from ml.monitoring import drift

from ml.training import evaluate

log = logging.getLogger(__name__)

# Below this many labelled rows of each class, ranking metrics are noise: not reported.
MIN_CLASS_ROWS = 1


def outcome_metrics(rows: list[dict[str, Any]], card: dict[str, Any]) -> dict[str, Any]:
    """AUC, KS, bad rate among approved, confusion matrix and cost on labelled rows.

    Decisions are re-derived from the stored PD with the card's threshold, as served.
    """
    spec = card["spec"]["target"]
    labelled = [r for r in rows if r.get("outcome") is not None]
    y = np.array([1 if r["outcome"] == spec["positive"] else 0 for r in labelled], dtype=int)
    out: dict[str, Any] = {"labelled": len(labelled), "bad": int(y.sum()),
                           "good": int(len(y) - y.sum())}
    if out["bad"] < MIN_CLASS_ROWS or out["good"] < MIN_CLASS_ROWS:
        out["metrics"] = None
        out["note"] = "AUC, KS and the confusion matrix need labelled outcomes of both classes"
        return out
    from ml.spec.schema import CostMatrix

    p = np.array([r["probability_of_default"] for r in labelled], dtype=float)
    full = evaluate.classification_metrics(
        y, p, float(card["threshold"]), CostMatrix(**card["cost"]),
        labels=(spec.get("negative") or "negative", spec["positive"]))
    out["metrics"] = {k: full[k] for k in ("roc_auc", "gini", "ks", "bad_rate_among_approved",
                                           "approval_rate", "confusion_matrix",
                                           "expected_cost", "threshold")}
    return out


def build_report(card: dict[str, Any], rows: list[dict[str, Any]],
                 window: dict[str, Any] | None = None) -> dict[str, Any]:
    """The monitoring report of stored prediction ``rows`` against the served model.

    Args:
        card: the model card (its ``reference`` bins, threshold, cost, spec).
        rows: stored predictions (``features`` decoded), oldest first.
        window: how the rows were chosen (``last`` or ``days``), echoed in the report.
    """
    report: dict[str, Any] = {
        "model": {"name": card["name"], "version": card["version"]},
        "window": {**(window or {}), "rows": len(rows),
                   "from": _iso(rows[0]["created_at"]) if rows else None,
                   "to": _iso(rows[-1]["created_at"]) if rows else None,
                   "model_versions": dict(Counter(r["model_version"] for r in rows))},
        "bands": {"stable_below": drift.STABLE, "act_above": drift.WATCH},
    }
    if not rows:
        report.update(drift=None, decisions={}, outcomes={"labelled": 0, "metrics": None})
        return report
    compared = drift.compare(card["reference"], [r["features"] for r in rows],
                             [r["probability_of_default"] for r in rows])
    report["drift"] = compared
    report["summary"] = {
        "score_psi": compared["score"]["psi"],
        "max_feature_psi": max(e["psi"] for e in compared["features"].values()),
        "features_to_act_on": sorted(n for n, e in compared["features"].items()
                                     if e["band"] == "act"),
    }
    counts = Counter(r["decision"] for r in rows)
    report["decisions"] = {d: {"count": c, "share": c / len(rows)}
                           for d, c in sorted(counts.items())}
    report["outcomes"] = outcome_metrics(rows, card)
    return report


def save_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """PSI per feature (bars, with the 0.10 / 0.25 band lines) and the score's bins."""
    import matplotlib
    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    if not report.get("drift"):
        return []
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


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat(timespec="seconds")
    return str(value)


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--model``, shared by ``monitor`` and ``retrain``."""
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of the prediction store (default: $DATABASE_URL, "
                             "else the SQLite file the API writes)")
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


def open_store(url: str | None) -> Any:
    """The prediction store at ``url``, ``$DATABASE_URL`` or the API's default."""
    import os

    from ml.monitoring.store import PredictionStore, default_url

    return PredictionStore(url or os.environ.get("DATABASE_URL") or default_url(),
                           retry_seconds=0)


def run(args: argparse.Namespace) -> int:
    """Build the report from the store, write JSON and plots, print a summary."""
    from ml.serving.artifact import read_card

    if args.last is not None and args.last < 1 or args.days is not None and args.days <= 0:
        raise ValueError("--last and --days must be positive")
    card = read_card(args.model or config.models_dir())
    store = open_store(args.database_url)
    try:
        rows = store.window(last=args.last, days=args.days)
    finally:
        store.dispose()
    window = {"last": args.last} if args.last else {"days": args.days} if args.days else {}
    report = build_report(card, rows, window)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitoring.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plots = [] if args.no_plots else save_plots(report, args.out / "plots")
    summary = report.get("summary") or {}
    print(json.dumps({"rows": len(rows), "score_psi": summary.get("score_psi"),
                      "max_feature_psi": summary.get("max_feature_psi"),
                      "features_to_act_on": summary.get("features_to_act_on", []),
                      "report": str(args.out / "monitoring.json"),
                      "plots": [str(p) for p in plots]}))
    return 0
