"""Outcomes and monitoring: ``POST /feedback`` and ``GET /monitoring``.

Feedback labels a stored prediction with what happened (the spec's target values, e.g.
``good`` / ``bad``), addressed by the ``prediction_id`` the server issued. It is
idempotent: the same outcome again answers 200 unchanged, a different one 409. Outcomes
belong to someone: a client with the ``feedback`` scope labels only its own predictions
(another's answers 404, as a missing one: its existence is not revealed);
``feedback:all`` labels anyone's. A recorded outcome changes only by an explicit
correction, ``"correction": true`` with a ``reason``, which needs ``feedback:correct``
and is kept in ``outcome_corrections`` and logged. Who recorded it is stored with it.

``GET /monitoring`` serves the newest report the monitor job (``python -m ml monitor``)
saved in the store (:mod:`ml.monitoring.reports`), with its id, time and age: its cost
is one indexed read, whatever the window. ``?last=N`` / ``?days=D`` compute a window of
at most ``MONITORING_MAX_ROWS`` predictions here instead
(:func:`ml.monitoring.report.build_report`, numpy only: no scikit-learn, scipy or pandas
in a worker). Both obey the minimum window (``MONITORING_MIN_ROWS``): fewer predictions
give counts only. The ``/metrics`` gauges come from the stored report too
(:class:`app.metrics.ReportCollector`), never from a request here.
"""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from typing import Any, Mapping

from flask import Blueprint, Flask, Response, current_app, request

from app import logs, metrics, services, store
from app.auth import current_identity, forbidden
from app.errors import APIError
from app.model import EXTENSION as MODEL_EXTENSION
from app.model import get_predictor
from app.store import get_store
from ml.monitoring.report import build_report
from ml.monitoring.reports import newest_report
from ml.monitoring.store import STORE_ERRORS, StoreUnavailable

bp = Blueprint("monitoring", __name__)
log = logging.getLogger(__name__)

FEEDBACK_FIELDS = ("prediction_id", "outcome", "index", "correction", "reason")


def parse_feedback(payload: Any, outcomes: tuple[str, str]) -> tuple[str, int, str]:
    """``(prediction_id, index, outcome)`` from a decoded body; 400 listing every problem
    (:func:`parse_correction` reads the correction fields)."""
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object.",
                       [{"field": "body", "problem": "must be a JSON object"}])
    problems = [{"field": str(k) if len(str(k)) <= 64 else "(long name)",
                 "problem": "is not a known field"} for k in payload if k not in FEEDBACK_FIELDS]
    prediction_id = payload.get("prediction_id")
    if (not isinstance(prediction_id, str)
            or not logs.sane_request_id(prediction_id) == prediction_id):
        problems.append({"field": "prediction_id", "problem": "must be the prediction_id a "
                         "prediction answered (1-128 letters, digits or ._:-)"})
    outcome = payload.get("outcome")
    if not isinstance(outcome, str) or outcome not in outcomes:
        # Quoted: with a 0/1 target, "must be one of: 0, 1" read as refusing the number 1.
        problems.append({"field": "outcome", "problem": "must be a string, one of: "
                         + ", ".join(json.dumps(o) for o in outcomes)})
    index = payload.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1_000_000:
        problems.append({"field": "index", "problem": "must be a whole number from 0, the "
                         "applicant's position in a batch"})
    problems.extend(_correction_problems(payload))
    if problems:
        raise APIError(400, f"The feedback has {len(problems)} problem"
                            f"{'s' if len(problems) > 1 else ''}.", problems)
    return prediction_id, index, outcome


def _correction_problems(payload: dict[str, Any]) -> list[dict[str, str]]:
    correction, reason = payload.get("correction", False), payload.get("reason")
    problems = []
    if not isinstance(correction, bool):
        problems.append({"field": "correction", "problem": "must be true or false"})
    if (reason is not None or correction is True) and not (
            isinstance(reason, str) and 3 <= len(reason) <= 500):
        problems.append({"field": "reason", "problem": "must be a text of 3 to 500 "
                         "characters (a correction needs one)"})
    return problems


def parse_correction(payload: dict[str, Any]) -> str | None:
    """The reason of a requested correction (a validated body), None for plain feedback."""
    return payload["reason"] if payload.get("correction") else None


def parse_window(args: Mapping[str, str], most: int) -> dict[str, Any] | None:
    """The window to compute from the query: ``last`` N and/or ``days`` D (both: the newest
    N of the last D days; ``days`` alone: its newest ``most``); None without either (the
    stored report); 400 when a value is not usable."""
    unknown = [k for k in args if k not in ("last", "days")]
    problems = [{"field": k if len(k) <= 64 else "(long name)",
                 "problem": "is not a known query parameter"} for k in unknown]
    window: dict[str, Any] = {}
    if "last" in args:
        try:
            window["last"] = int(args["last"])
        except ValueError:
            window["last"] = 0
        if not 1 <= window["last"] <= most:
            problems.append({"field": "last", "problem": f"must be a whole number from 1 to "
                             f"{most}"})
    if "days" in args:
        try:
            days = float(args["days"])
        except ValueError:
            days = math.nan
        if not (math.isfinite(days) and 0 < days <= 3660):
            problems.append({"field": "days", "problem": "must be a number of days above 0 "
                             "and at most 3660"})
        window["days"] = days
    if problems:
        raise APIError(400, "The query parameters are invalid.", problems)
    return window or None


def _json(body: Any, status: int = 200) -> Response:
    response = Response(services.to_json(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _unavailable(exc: StoreUnavailable, operation: str) -> APIError:
    STORE_ERRORS.labels(operation).inc()
    logs.annotate(store_error=str(exc))
    return APIError(503, "The prediction store is unavailable; try again later.")


@bp.post("/feedback")
def feedback() -> Response:
    """Label a stored prediction the caller may see with its observed outcome (idempotent;
    changed only by an explicit correction)."""
    predictor = get_predictor()
    if not request.is_json:
        raise APIError(415, "Send the request body as application/json.")
    target = predictor.spec.target
    payload = services.decode_json(request.get_data(cache=False))
    prediction_id, index, outcome = parse_feedback(payload, (target.negative, target.positive))
    reason = parse_correction(payload)
    identity = current_identity()
    if reason is not None and not identity.has("feedback:correct"):
        raise forbidden("feedback:correct")
    owner = None if identity.has("feedback:all") else identity.principal
    try:
        state, row = get_store().label(prediction_id, index, outcome, by=identity.principal,
                                       owner=owner, correction=reason)
    except StoreUnavailable as exc:
        raise _unavailable(exc, "feedback") from None
    if state == "unknown":
        raise APIError(404, "No stored prediction you may label has this prediction_id and "
                            "index.")
    if state == "conflict":
        raise APIError(409, "This prediction already has a different outcome; outcomes are "
                            "changed only by a correction.")
    logs.annotate(feedback=state, prediction_id=prediction_id)
    if state == "corrected":
        log.warning("outcome corrected", extra={"prediction_id": prediction_id,
                                                "index": index, "by": identity.principal,
                                                "reason": reason})
    return _json({"prediction_id": prediction_id, "index": index, "outcome": row["outcome"],
                  "status": state})


@bp.get("/monitoring")
def monitoring() -> Response:
    """The newest stored monitoring report; or, with ``?last=N`` / ``?days=D``, a small
    window computed now. 404 until the monitor job has saved a report."""
    predictor = get_predictor()
    window = parse_window(request.args, current_app.config["MONITORING_MAX_ROWS"])
    try:
        if window is None:
            return _json(stored_report(predictor.name))
        return _json(computed_report(predictor.card, window))
    except StoreUnavailable as exc:
        raise _unavailable(exc, "monitoring") from None


def stored_report(model_name: str) -> dict[str, Any]:
    """The newest report the job saved for ``model_name``, with its id, time and age."""
    stored = newest_report(get_store(), model_name)
    if stored is None:
        raise APIError(404, f"No monitoring report of model {model_name} yet: the monitor "
                            "job writes one (python -m ml monitor --days 7; in the cluster "
                            "the credit-risk-monitor CronJob, hourly). Or ask for a small "
                            "window now with ?last=N or ?days=D.")
    age = datetime.now(timezone.utc) - stored["created_at"]
    return {"id": stored["id"], "created_at": stored["created_at"].isoformat(timespec="seconds"),
            "age_seconds": round(age.total_seconds(), 3), **stored["report"]}


def computed_report(card: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    """The report of a window read now (a ``days`` window: its newest
    ``MONITORING_MAX_ROWS``), under the same minimum window as the job."""
    config = current_app.config
    now = datetime.now(timezone.utc)
    rows = get_store().window(last=window.get("last", config["MONITORING_MAX_ROWS"]),
                              days=window.get("days"))
    report = build_report(card, rows, window, config["MONITORING_MIN_ROWS"],
                          config["MONITORING_MIN_LABELLED"])
    return {"id": None, "created_at": now.isoformat(timespec="seconds"), "age_seconds": 0.0,
            **report}


def init_app(app: Flask) -> None:
    """Open the prediction store (it saves every prediction), add the two routes, and
    export the newest stored report's gauges on ``/metrics``."""
    store.init_app(app)
    app.register_blueprint(bp)
    predictor = app.extensions[MODEL_EXTENSION].predictor
    app.extensions[metrics.REPORT_EXTENSION] = metrics.ReportCollector(
        app.extensions[store.EXTENSION], predictor.card if predictor else None,
        ttl=app.config["MONITORING_CACHE_SECONDS"],
        deadline=app.config["MONITORING_METRICS_DEADLINE_SECONDS"])
