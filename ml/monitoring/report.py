"""The monitoring report of a window of stored predictions: drift, decisions, outcomes.

:func:`build_report` is pure (card + rows in, dict out) and serves both ``GET
/monitoring`` in the API and the batch job ``python -m ml monitor``
(:mod:`ml.monitoring.monitor`). Drift: PSI of the score and CSI of every feature against
the model card's reference bins (:mod:`ml.monitoring.drift`), banded < 0.10 stable,
0.10-0.25 watch, > 0.25 act. Performance: :mod:`ml.monitoring.outcomes` on the rows with
a fed-back outcome.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from ml.monitoring import drift
from ml.monitoring.outcomes import outcome_metrics


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


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat(timespec="seconds")
    return str(value)
