"""The web form: ``GET /`` shows one input per feature of the served model's spec,
``POST /`` scores the applicant and shows PD, decision, risk grade and reasons.

The page is generated from :mod:`ml.spec.schema` (labels, descriptions, bounds, categories),
so a model trained on another data set gets its own form without code changes. A
submission goes through the same steps as ``POST /predict``: the spec's
:func:`ml.spec.schema.validate_record`, :func:`app.services.predict` and
:func:`app.services.record_prediction` (logs, metrics, the ``prediction_made`` signal),
so predictions made here are logged and stored exactly like API ones.

These pages are for people, so they answer in HTML (a 503 page when the model is not
ready); they are not part of the OpenAPI document. Plain POST, no JavaScript needed.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from flask import (Blueprint, Flask, Response, current_app, redirect, render_template, request,
                   url_for)

from app import logs, services
from app.errors import APIError, handle_api_error
from app.auth import current_identity
from app.model import get_state
from ml.spec.schema import CATEGORICAL, DatasetSpec, Feature, validate_record

bp = Blueprint("web", __name__)

DECISION_TEXT = {"approve": "Approve", "decline": "Decline"}


def parse_form(spec: DatasetSpec, form: Mapping[str, str]
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn the form's strings into an API record and the problems by field name.

    Numbers are parsed (whole numbers as ``int``); an empty field becomes ``None``,
    which the spec accepts only for nullable features. Fields the spec does not know
    (the submit button) are ignored. The record is then checked by
    :func:`ml.spec.schema.validate_record`, exactly as an API request is.

    Returns:
        The record (only valid when there are no problems) and ``{field: problem}``.
    """
    record: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for feature in spec.features:
        text = (form.get(feature.name) or "").strip()
        if not text:
            record[feature.name] = None
            if not feature.nullable:
                problems[feature.name] = ("is required" if feature.kind != CATEGORICAL
                                          else "is required: choose one")
            continue
        if feature.kind == CATEGORICAL:
            record[feature.name] = text
            continue
        number = _parse_number(text)
        if number is None:
            problems[feature.name] = "must be a number"
        record[feature.name] = number
    for problem in validate_record(spec, record):
        problems.setdefault(problem["field"], problem["problem"])
    return record, problems


def _parse_number(text: str) -> int | float | None:
    """A number typed by a person, or ``None``.

    Commas are not guessed at: ``1,5`` could mean 1.5 or 15, so it is refused.
    """
    cleaned = text.strip()
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def message(feature: Feature, problem: str) -> str:
    """A friendly sentence for a problem: ``Loan duration must be at most 120 months.``"""
    text = f"{feature.label} {problem}"
    if feature.unit and problem.startswith(("must be at least", "must be at most")):
        text += f" {feature.unit}"
    return text + "."


def form_values(spec: DatasetSpec, source: Mapping[str, Any]) -> dict[str, str]:
    """The text each input shows: a submitted form, or a record (the card's example)."""
    values = {}
    for feature in spec.features:
        value = source.get(feature.name)
        if value is None:
            values[feature.name] = ""
        elif isinstance(value, float) and value.is_integer():
            values[feature.name] = str(int(value))
        else:
            values[feature.name] = str(value)
    return values


def describe_result(predictor: Any, result: dict[str, Any]) -> dict[str, Any]:
    """What the result panel shows: PD as a percentage, decision, grade and its meaning."""
    grade = next((g for g in predictor.grades if g["grade"] == result["risk_grade"]), {})
    return {
        "pd_percent": f"{100 * result['probability_of_default']:.1f} %",
        "score": f"{result['score']:.0f}",
        "decision": result["decision"],
        "decision_text": DECISION_TEXT.get(result["decision"], result["decision"]),
        "grade": result["risk_grade"],
        "grade_label": grade.get("label", ""),
        "threshold_percent": f"{100 * predictor.threshold:.1f} %",
        "reasons": [r["text"] for r in result.get("reasons", ())],
    }


def html_page(template: str, status: int = 200, **context: Any) -> Response:
    """A page for people (the form, sign-in), never cached: it can hold an applicant's
    data and a credit decision. The security headers are :mod:`app.auth_guard`'s."""
    response = Response(render_template(template, **context), status=status,
                        mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(status: int = 200, **context: Any) -> Response:
    return html_page("form.html", status, **context)


def _not_ready() -> Response:
    return _page(503, not_ready=True, reason="The model is not loaded yet.")


@bp.get("/")
def form() -> Response:
    """The empty form, prefilled with the model card's sample applicant."""
    predictor = get_state().predictor  # None until the model is loaded and self-tested
    if predictor is None:
        return _not_ready()
    return _page(spec=predictor.spec, predictor=predictor, errors={},
                 values=form_values(predictor.spec, predictor.card.get("example") or {}))


@bp.post("/")
def submit() -> Response:
    """Validate the form, score the applicant as ``POST /predict`` does, show the result."""
    predictor = get_state().predictor  # None until the model is loaded and self-tested
    if predictor is None:
        return _not_ready()
    spec = predictor.spec
    record, problems = parse_form(spec, request.form)
    values = form_values(spec, request.form)
    if problems:
        logs.annotate(problems=[{"field": f, "problem": p} for f, p in problems.items()])
        errors = {f.name: message(f, problems[f.name])  # in the form's order
                  for f in spec.features if f.name in problems}
        return _page(400, spec=spec, predictor=predictor, errors=errors, values=values)
    config = current_app.config
    results = services.predict(predictor, [record], True, config["MAX_REASONS"])
    prediction_id = logs.new_request_id()  # the store's key, as for POST /predict
    logs.annotate(**services.record_prediction(
        current_app._get_current_object(), logs.request_id(), predictor, [record], results,
        False, config["LOG_FEATURES"], prediction_id, current_identity().principal))
    return _page(spec=spec, predictor=predictor, errors={}, values=values,
                 result=describe_result(predictor, results[0]),
                 request_id=prediction_id)


def wants_page() -> bool:
    """Whether the caller is a person's browser (it prefers HTML and sends no bearer
    credential), rather than a script, which gets the API's JSON errors."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and "Authorization" not in request.headers


@bp.errorhandler(APIError)
def refused(exc: APIError) -> Response:
    """The edge check's refusals as people see them: a stranger's browser is sent to sign
    in, a person without the ``score`` scope gets a page saying so. Scripts get the one
    JSON error shape (401 with ``WWW-Authenticate``, 403) as on every other route."""
    if not wants_page():
        return handle_api_error(exc)
    if exc.status == 401:
        target = request.full_path.rstrip("?") if request.method == "GET" else "/"
        return redirect(url_for("sso.signin", next=target), 303)
    if exc.status == 403:
        return html_page("refused.html", 403, title="You may not assess applications",
                         text="You are signed in, but your account does not grant the "
                              "score scope. Ask your administrator for it.")
    return html_page("refused.html", exc.status, title="The request was refused",
                     text=exc.message)


def init_app(app: Flask) -> None:
    """Register the form's routes."""
    app.register_blueprint(bp)
