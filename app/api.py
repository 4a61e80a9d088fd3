"""The JSON API: liveness, readiness, the model card and predictions.

Views are thin: they fetch the predictor, hand the request to :mod:`app.services` and
return what it shapes. Errors are raised as :class:`app.errors.APIError` and answered
by :mod:`app.errors` in the one error shape.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from app import logs, services
from app.auth import current_identity
from app.errors import APIError, error_response
from app.model import get_predictor, get_state

bp = Blueprint("api", __name__)

JSON = "application/json"


def _json(body: object, status: int = 200) -> Response:
    return Response(services.to_json(body), status=status, mimetype=JSON)


@bp.get("/health_check")
def health_check() -> Response:
    """Liveness: the process answers HTTP. Cheap, and green even without a model."""
    return _json({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Readiness: 200 once the model is loaded and self-tested, else 503 and why."""
    state = get_state()
    if not state.ready:
        return error_response(503, f"The model is not ready: {state.error}")
    # Dependencies such as the prediction store report their state; they inform,
    # they do not fail readiness (a store outage must not stop predictions).
    extra = {name: check() for name, check in current_app.extensions.get("readiness", {}).items()}
    return _json({"status": "ready", "model": {"name": state.predictor.name,
                                               "version": state.predictor.version}, **extra})


@bp.get("/model")
def model_card() -> Response:
    """The served model's card (metrics, threshold, grades, features, versions, date) and
    ``signature``: the key id that signed the artifact, as verified at load."""
    predictor = get_predictor()
    return _json({**predictor.card, "signature": {"key_id": predictor.signer,
                                                  "signed_at": predictor.artifact.signed_at}})


@bp.post("/predict")
def predict() -> Response:
    """Score one applicant object, or ``{"instances": [...]}``; ``?reasons=false`` skips
    the reason codes. Needs the ``score`` scope (checked at the edge, :mod:`app.auth`)."""
    predictor = get_predictor()
    # One context lookup each, not one per use (each costs about a microsecond).
    req, app = request._get_current_object(), current_app._get_current_object()
    if not req.is_json:
        raise APIError(415, "Send the request body as application/json.")
    config = app.config
    reasons = services.parse_reasons(req.args)
    records, results, batch = services.score_body(predictor, req.get_data(cache=False),
                                                  reasons, config["MAX_BATCH"],
                                                  config["MAX_REASONS"])
    # The store's key is issued here, unguessable; the client's X-Request-ID is only its
    # correlation id (reusing someone else's must not reach their prediction).
    info = logs.current()
    request_id, prediction_id = info.request_id, logs.new_request_id()
    info.fields.update(services.record_prediction(app, request_id, predictor, records,
                                                  results, batch, config["LOG_FEATURES"],
                                                  prediction_id,
                                                  current_identity().principal))
    response = _json(services.response_body(predictor, results, batch, request_id,
                                            prediction_id))
    # Credit decisions are personal data: no shared cache may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response
