"""The monitor job's reports in the prediction store (table ``monitoring_reports``).

``python -m ml monitor`` saves each report it builds (:func:`save_report`); ``GET
/monitoring`` and the ``/metrics`` gauges read the newest one (:func:`newest_report`), so
a serving worker never computes a large window itself. Both go through the store's
engine and its deadline helpers: a request waits at most its deadline for the database,
a job as long as it takes. Runtime code (SQLAlchemy and the standard library): the API
imports it.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ml.monitoring.schema import first_document, newest_of, reports
from ml.monitoring.store import PredictionStore


def _when(text: str | None) -> datetime | None:
    """The datetime of a report's ISO text (``window.from``/``to``: aware, from
    :func:`ml.monitoring.report.build_report`)."""
    return None if text is None else datetime.fromisoformat(text)


def _clean(value: Any) -> Any:
    """The report with non-finite floats as None: JSON has no NaN, and PostgreSQL's JSON
    readers and browsers refuse it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def save_report(store: PredictionStore, report: dict[str, Any],
                now: datetime | None = None) -> int:
    """Insert a report built by :func:`ml.monitoring.report.build_report`; its id.

    Raises:
        StoreUnavailable: the database failed (or, for a request, missed its deadline).
    """
    window = report["window"]
    values = {"created_at": now or datetime.now(timezone.utc),
              "model_name": report["model"]["name"],
              "model_version": report["model"]["version"],
              "window_from": _when(window.get("from")), "window_to": _when(window.get("to")),
              "rows": int(window["rows"]),
              "labelled": int((report.get("outcomes") or {}).get("labelled", 0)),
              "report": json.dumps(_clean(report), default=str, allow_nan=False)}

    def work(conn: sa.Connection) -> int:
        return int(conn.execute(reports.insert().values(**values)).inserted_primary_key[0])
    return store.within(work)


def newest_report(store: PredictionStore, model_name: str | None = None,
                  seconds: float | None = None) -> dict[str, Any] | None:
    """The newest stored report (of ``model_name`` when given), or None when there is none.

    Args:
        store: the prediction store.
        model_name: only reports of this model (the API asks for the model it serves).
        seconds: longest wait for the database (default: the store's request deadline).

    Returns:
        ``{"id", "created_at", "model_name", "model_version", "window_from",
        "window_to", "rows", "labelled", "report"}``, times aware (UTC), ``report`` decoded.

    Raises:
        StoreUnavailable: the database failed or did not answer within ``seconds``.
    """
    return store.within(lambda conn: first_document(conn, newest_of(reports, model_name),
                                                    "report"), seconds)
