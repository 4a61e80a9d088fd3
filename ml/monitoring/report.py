"""The monitoring report of a window of stored predictions: drift, decisions, outcomes.

:func:`build_report` is pure (card + rows in, dict out) and serves both the batch job
``python -m ml monitor`` (:mod:`ml.monitoring.monitor`, whose reports the API serves)
and the small windows ``GET /monitoring?last=N`` computes. Drift: PSI of the score and
CSI of every feature against the model card's reference bins (:mod:`ml.monitoring.drift`),
banded < 0.10 stable, 0.10-0.25 watch, > 0.25 act. Performance:
:mod:`ml.monitoring.outcomes` on the rows with a fed-back outcome.

The minimum window, one rule for the job and the API: below ``min_rows`` predictions a
report carries counts only (no bins, no decision mix, no outcome metrics), so it never
describes one applicant or a handful; outcome metrics need ``min_labelled`` labelled
rows with at least :data:`MIN_CLASS_LABELLED` of each class. Why these defaults:
``docs/design.md``, "Monitoring: a minimum window".
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from ml.monitoring import drift
from ml.monitoring.outcomes import outcome_metrics

# Defaults of MONITORING_MIN_ROWS and MONITORING_MIN_LABELLED (app/config.py, the job).
MIN_ROWS = 200
MIN_LABELLED = 200
# Outcome metrics also need this many labelled rows of each class (AUC, KS and a bad rate
# of fewer bads would be one applicant's story, and noise).
MIN_CLASS_LABELLED = 10


def too_few(rows: int, minimum: int) -> str:
    """The note of a report below the minimum window."""
    return f"too few predictions to describe ({rows} < {minimum})"


def build_report(card: dict[str, Any], rows: list[dict[str, Any]],
                 window: dict[str, Any] | None = None, min_rows: int = MIN_ROWS,
                 min_labelled: int = MIN_LABELLED) -> dict[str, Any]:
    """The monitoring report of stored prediction ``rows`` against the served model.

    Args:
        card: the model card (its ``reference`` bins, threshold, cost, spec).
        rows: stored predictions (``features`` decoded), oldest first.
        window: how the rows were chosen (``last`` or ``days``), echoed in the report.
        min_rows: below this many rows, counts only (the minimum window).
        min_labelled: below this many labelled rows, no outcome metrics.
    """
    report: dict[str, Any] = {
        "model": {"name": card["name"], "version": card["version"]},
        "window": {**(window or {}), "rows": len(rows),
                   "from": _iso(rows[0]["created_at"]) if rows else None,
                   "to": _iso(rows[-1]["created_at"]) if rows else None,
                   "model_versions": dict(Counter(r["model_version"] for r in rows))},
        "minimum": {"rows": min_rows, "labelled": min_labelled,
                    "labelled_per_class": MIN_CLASS_LABELLED},
        "bands": {"stable_below": drift.STABLE, "act_above": drift.WATCH},
    }
    if len(rows) < max(min_rows, 1):
        labelled = sum(1 for r in rows if r.get("outcome") is not None)
        note = too_few(len(rows), min_rows)
        report.update(drift=None, summary=None, decisions=None, note=note,
                      outcomes={"labelled": labelled, "metrics": None, "note": note})
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
    report["outcomes"] = outcomes_of(rows, card, min_labelled)
    return report


def outcomes_of(rows: list[dict[str, Any]], card: dict[str, Any],
                min_labelled: int = MIN_LABELLED) -> dict[str, Any]:
    """Labelled counts of a window and, above the outcome minimum, its outcome metrics."""
    positive = card["spec"]["target"]["positive"]
    labelled = [r["outcome"] for r in rows if r.get("outcome") is not None]
    bad = sum(1 for o in labelled if o == positive)
    counts = {"labelled": len(labelled), "bad": bad, "good": len(labelled) - bad}
    fewest = min(bad, len(labelled) - bad)
    if len(labelled) < max(min_labelled, 1) or fewest < MIN_CLASS_LABELLED:
        return {**counts, "metrics": None,
                "note": f"outcome metrics need {min_labelled} labelled predictions with at "
                        f"least {MIN_CLASS_LABELLED} of each class ({len(labelled)} labelled, "
                        f"{bad} bad, {len(labelled) - bad} good)"}
    return outcome_metrics(rows, card)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # aware: the store reads UTC (schema.UtcDateTime)
        return value.isoformat(timespec="seconds")
    return str(value)
