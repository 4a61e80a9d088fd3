"""Outcomes and monitoring: ``POST /feedback`` and ``GET /monitoring``.

Feedback labels a stored prediction with what happened (the spec's target values, e.g.
``good`` / ``bad``), addressed by the ``prediction_id`` the server issued. It is
idempotent: the same outcome again answers 200 unchanged, a different one 409. Outcomes
belong to someone: a client with the ``feedback`` scope labels only its own predictions
(another's answers 404, as a missing one: its existence is not revealed);
``feedback:all`` labels anyone's. A recorded outcome changes only by an explicit
correction, ``"correction": true`` with a ``reason``, which needs ``feedback:correct``
and is kept in ``outcome_corrections`` and logged. Who recorded it is stored with it.

Monitoring computes drift and performance for a window of stored predictions
(:func:`ml.monitoring.report.build_report`, numpy only: no scikit-learn, scipy or pandas
in a worker) and publishes the headline figures as Prometheus gauges, which the alert
rules in ``monitoring/alerts.yml`` watch.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import Gauge

from app import logs, services, store
from app.auth import current_identity, forbidden
from app.errors import APIError
from app.model import get_predictor
from app.store import get_store
from ml.monitoring.report import build_report
from ml.monitoring.store import STORE_ERRORS, StoreUnavailable

bp = Blueprint("monitoring", __name__)
log = logging.getLogger(__name__)

# "mostrecent": under gunicorn the figure of the last computation wins, whichever
# worker made it (a sum or max over workers would be meaningless for a PSI).
PSI = Gauge("credit_api_psi", "PSI (CSI) of a feature against the training reference, "
            "as of the last monitoring computation.", ["feature"],
            multiprocess_mode="mostrecent")
SCORE_PSI = Gauge("credit_api_score_psi", "PSI of the predicted PD against the training "
                  "reference, as of the last monitoring computation.",
                  multiprocess_mode="mostrecent")
OUTCOME = Gauge("credit_api_outcome_metric", "Performance on labelled outcomes of the last "
                "monitoring window (roc_auc, ks, bad_rate_among_approved, expected_cost).",
                ["metric"], multiprocess_mode="mostrecent")
WINDOW_ROWS = Gauge("credit_api_monitoring_rows", "Predictions in the last monitoring window.",
                    multiprocess_mode="mostrecent")

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


def parse_window(args: Mapping[str, str], default_last: int, most: int) -> dict[str, Any]:
    """The window from the query: ``last`` N and/or ``days`` D (both: the newest N of
    the last D days); 400 when a value is not usable."""
    unknown = [k for k in args if k not in ("last", "days")]
    problems = [{"field": k if len(k) <= 64 else "(long name)",
                 "problem": "is not a known query parameter"} for k in unknown]
    window: dict[str, Any] = {} if "days" in args else {"last": default_last}
    if "last" in args:
        try:
            window = {"last": int(args["last"])}
        except ValueError:
            window = {"last": 0}
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
    return window


def publish(report: dict[str, Any]) -> None:
    """Set the gauges from a monitoring report."""
    WINDOW_ROWS.set(report["window"]["rows"])
    if report.get("drift"):
        SCORE_PSI.set(report["drift"]["score"]["psi"])
        for name, entry in report["drift"]["features"].items():
            PSI.labels(name).set(entry["psi"])
    metrics = (report.get("outcomes") or {}).get("metrics")
    if metrics:
        for key in ("roc_auc", "ks", "bad_rate_among_approved", "expected_cost"):
            OUTCOME.labels(key).set(metrics[key])


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
    """Drift and performance of a window of stored predictions (``?last=N`` or ``?days=D``)."""
    predictor = get_predictor()
    config = current_app.config
    window = parse_window(request.args, config["MONITORING_LAST"], config["MONITORING_MAX_ROWS"])
    try:
        # A days window is capped too: its newest MONITORING_MAX_ROWS predictions.
        rows = get_store().window(last=window.get("last", config["MONITORING_MAX_ROWS"]),
                                  days=window.get("days"))
    except StoreUnavailable as exc:
        raise _unavailable(exc, "monitoring") from None
    report = build_report(predictor.card, rows, window)
    publish(report)
    return _json(report)


def init_app(app: Flask) -> None:
    """Open the prediction store (it saves every prediction) and add the two routes."""
    store.init_app(app)
    app.register_blueprint(bp)
