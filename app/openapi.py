"""The OpenAPI 3 document, generated from the served artifact: one source of truth.

Every applicant field (type, enum, bounds, description) comes from the model's
:class:`ml.spec.schema.DatasetSpec`, the examples from its card, the grade bands and the
threshold from the card too. Nothing here is written by hand per field, so the docs
cannot drift from what ``ml.spec.schema.validate_record`` accepts. No view holds YAML.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

from ml.spec.schema import CATEGORICAL, DatasetSpec, Feature, example_record

REF = "#/components/schemas/"
ERROR_STATUSES = {
    400: "The request is invalid: malformed JSON (NaN and Infinity included), not an "
         "object, or applicants with missing, unknown, mistyped or out-of-range fields. "
         "`details` lists every problem at once; values are never echoed back.",
    404: "No such route; for POST /feedback: no stored prediction the caller may label has "
         "this prediction_id and index.",
    409: "POST /feedback: the prediction already has a different outcome (changed only by "
         "a correction).",
    405: "The route exists but not for this method; the `Allow` header lists the methods.",
    413: "The request body is larger than `MAX_CONTENT_LENGTH` bytes.",
    415: "The request body is not `application/json`.",
    401: "No valid bearer credential (an API key, or an access token of the configured "
         "issuer); `WWW-Authenticate` carries RFC 6750's `error`.",
    403: "The credential is valid but lacks the operation's scope (`WWW-Authenticate`: "
         "`error=\"insufficient_scope\"`).",
    429: "Too many requests from this client; `Retry-After` says how many seconds to wait.",
    503: "The model is not loaded or failed its self-test; `message` says why "
         "(GET /ready too).",
}
EXAMPLE_ERROR = {
    "error": "Bad Request",
    "message": "The request has 2 problems.",
    "details": [{"field": "age_in_years", "problem": "must be at least 18"},
                {"field": "favourite_colour", "problem": "is not a known feature"}],
}


def feature_schema(feature: Feature) -> dict[str, Any]:
    """The JSON schema of one applicant field, exactly as the validator checks it."""
    text = feature.description or feature.label
    if feature.kind == CATEGORICAL:
        codes = "; ".join(f"`{c.code}` = {c.label}" for c in feature.categories)
        schema: dict[str, Any] = {"type": "string", "enum": list(feature.codes),
                                  "description": f"{text} Codes: {codes}."}
    else:
        schema = {"type": "integer" if feature.integer else "number",
                  "description": text + (f" Unit: {feature.unit}." if feature.unit else "")}
        for key in ("minimum", "maximum"):
            bound = getattr(feature, key)
            if bound is not None:
                schema[key] = int(bound) if feature.integer else bound
    schema["title"] = feature.label
    if feature.nullable:
        schema["nullable"] = True
    return schema


def applicant_schema(spec: DatasetSpec, example: dict[str, Any] | None) -> dict[str, Any]:
    """One applicant: every model feature required, nothing else allowed."""
    return {
        "type": "object",
        "description": "One credit applicant. Protected attributes (e.g. "
                       + ", ".join(f.name for f in spec.protected)
                       + ") are not model inputs and are refused." if spec.protected
                       else "One credit applicant.",
        "properties": {f.name: feature_schema(f) for f in spec.features},
        "required": spec.feature_names,
        "additionalProperties": False,
        "example": example or example_record(spec),
    }


def _grades_text(card: dict[str, Any]) -> str:
    """The PD bands of the card's grades: each ``max_pd`` is an exclusive upper bound,
    except the last (ml.serving.predictor), e.g. "`A`: PD below 5% (very low risk); ..."."""
    grades = card.get("grades", ())
    return "; ".join(
        f"`{g['grade']}`: PD " + ("up to" if i == len(grades) - 1 else "below")
        + f" {g['max_pd']:.0%}" + (f" ({g['label']})" if g.get("label") else "")
        for i, g in enumerate(grades))


def result_schemas(card: dict[str, Any], max_reasons: int) -> dict[str, Any]:
    """Schemas of a reason code and of one applicant's result."""
    threshold = float(card.get("threshold", 0.5))
    grades = [g["grade"] for g in card.get("grades", ())]
    grade_schema: dict[str, Any] = {"type": "string", "description":
                                    "Risk grade from PD bands: " + _grades_text(card)}
    if grades:
        grade_schema["enum"] = grades
    return {
        "Reason": {
            "type": "object",
            "description": "A reason code: a feature that raises this applicant's PD, "
                           "with impact = PD minus the PD with that feature set to the "
                           "typical applicant's value; largest first.",
            "properties": {
                "feature": {"type": "string"}, "label": {"type": "string"},
                "value": {"type": "string", "description": "The applicant's value, for "
                          "people: the category's label, or the number with its unit."},
                "impact": {"type": "number", "description": "Contribution to the risk "
                           "score; positive raises the PD. For a scorecard: the points "
                           "lost against the characteristic's best attribute."},
                "text": {"type": "string"},
            },
            "required": ["feature", "label", "value", "impact", "text"],
        },
        "Prediction": {
            "type": "object",
            "properties": {
                "probability_of_default": {"type": "number", "minimum": 0, "maximum": 1,
                                           "description": "Calibrated PD."},
                "decision": {"type": "string", "enum": ["approve", "decline"],
                             "description": f"`decline` when the PD is at or above the "
                                            f"cost-optimal threshold {threshold:.4f}."},
                "score": {"type": "number", "description": "The PD in points, higher is "
                          "safer: base points at the base good:bad odds, and every PDO "
                          "more points double the odds (the spec's `scaling`; by default "
                          "600 at 50:1, 20 PDO)."},
                "points": {"type": "object", "additionalProperties": {"type": "number"},
                           "description": "Scorecards only: each characteristic's points "
                                          "(they add up to the score)."},
                "risk_grade": grade_schema,
                "reasons": {"type": "array", "maxItems": max_reasons,
                            "items": {"$ref": REF + "Reason"},
                            "description": "Up to {} reason codes; omitted or empty with "
                                           "`?reasons=false`.".format(max_reasons)},
            },
            "required": ["probability_of_default", "score", "decision", "risk_grade"],
        },
    }


def envelope_schemas() -> dict[str, Any]:
    """Schemas of the single and batch answers, the model reference and the error."""
    model_ref = {"$ref": REF + "ModelRef"}
    request_id = {"type": "string", "description": "The correlation id: the caller's "
                  "`X-Request-ID` if it was a sane token, else a generated one."}
    prediction_id = {"type": "string", "pattern": "^[0-9a-f]{32}$",
                     "description": "Issued by the server, unguessable: the id "
                     "`POST /feedback` records the outcome against."}
    return {
        "ModelRef": {"type": "object", "required": ["name", "version"],
                     "properties": {"name": {"type": "string"},
                                    "version": {"type": "string"}}},
        "PredictionResponse": {"allOf": [
            {"$ref": REF + "Prediction"},
            {"type": "object", "required": ["model", "request_id", "prediction_id"],
             "properties": {"model": model_ref, "request_id": request_id,
                            "prediction_id": prediction_id}}]},
        "BatchResponse": {
            "type": "object", "required": ["predictions", "model", "request_id",
                                           "prediction_id"],
            "properties": {"predictions": {"type": "array",
                                           "items": {"$ref": REF + "Prediction"}},
                           "model": model_ref, "request_id": request_id,
                           "prediction_id": prediction_id}},
        "Error": {
            "type": "object", "required": ["error", "message", "details"],
            "properties": {
                "error": {"type": "string", "description": "The HTTP reason phrase."},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {
                    "type": "object", "required": ["field", "problem"],
                    "properties": {"field": {"type": "string"},
                                   "problem": {"type": "string"}}}},
            },
            "example": EXAMPLE_ERROR,
        },
    }


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF + schema_name}}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/Error{c}"} for c in codes}


def paths(max_batch: int, example: dict[str, Any]) -> dict[str, Any]:
    """The operations, with their real status codes."""
    json_200 = {"type": "object"}
    return {
        "/predict": {"post": {
            "operationId": "predict", "tags": ["prediction"],
            "summary": "Score one applicant, or a batch of up to {}".format(max_batch),
            "description": "Send one applicant object, or `{\"instances\": [...]}` with "
                           f"1 to {max_batch} applicants. One object in, one result out; "
                           "a batch in, `predictions` out, in order.",
            "parameters": [
                {"name": "reasons", "in": "query", "required": False,
                 "description": "Include reason codes (default true; false is faster).",
                 "schema": {"type": "boolean", "default": True}},
                {"name": "X-Request-ID", "in": "header", "required": False,
                 "description": "Correlation id, echoed back when it is 1-128 characters "
                                "of letters, digits and `._:-`; otherwise replaced.",
                 "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"oneOf": [{"$ref": REF + "Applicant"},
                                     {"$ref": REF + "BatchRequest"}]},
                "examples": {"single": {"summary": "One applicant",
                                        "value": example},
                             "batch": {"summary": "A batch of two",
                                       "value": {"instances": [example, example]}}},
            }}},
            "responses": {
                "200": {"description": "The prediction(s).",
                        "headers": {"X-Request-ID": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"$ref": REF + "PredictionResponse"},
                            {"$ref": REF + "BatchResponse"}]}}}},
                **_errors(400, 413, 415, 503)},
        }},
        "/model": {"get": {
            "operationId": "model_card", "tags": ["model"],
            "summary": "The model card: metrics, threshold, grades, features, versions, "
                       "training date",
            "responses": {"200": _json("ModelCard", "The card of the served model."),
                          **_errors(503)}}},
        "/ready": {"get": {
            "operationId": "ready", "tags": ["operations"],
            "summary": "Readiness: 200 once the model is loaded and self-tested",
            "responses": {"200": _json("Ready", "Ready to serve."), **_errors(503)}}},
        "/health_check": {"get": {
            "operationId": "health_check", "tags": ["operations"],
            "summary": "Liveness: 200 while the process serves HTTP, model or not",
            "responses": {"200": {"description": "Alive.", "content": {
                "application/json": {"schema": json_200}}}}}},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["operations"],
            "summary": "Prometheus metrics, summed over all workers",
            "responses": {"200": {"description": "Prometheus text format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }


def monitoring_paths(max_rows: int) -> dict[str, Any]:
    """``POST /feedback`` and ``GET /monitoring`` (app.monitoring)."""
    return {
        "/feedback": {"post": {
            "operationId": "feedback", "tags": ["monitoring"],
            "summary": "Record the observed outcome of a stored prediction (idempotent)",
            "description": "The same outcome again answers 200 with status `unchanged`; a "
                           "different outcome for a labelled prediction answers 409 unless "
                           "sent as a correction. Only the caller's own predictions are "
                           "found (404 otherwise), all with `feedback:all`.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF + "Feedback"}}}},
            "responses": {"200": _json("FeedbackResponse", "The outcome is recorded."),
                          **_errors(400, 404, 409, 413, 415, 503)}}},
        "/monitoring": {"get": {
            "operationId": "monitoring", "tags": ["monitoring"],
            "summary": "The newest monitoring report: drift (PSI/CSI vs the training "
                       "reference), decision mix and performance on labelled outcomes",
            "description": "Without parameters: the newest report the monitor job "
                           "(`python -m ml monitor`, the hourly CronJob) saved for the served "
                           "model, with its `id`, `created_at` and `age_seconds`; 404 until "
                           "there is one. With `last` and/or `days`: a window of at most "
                           f"{max_rows} predictions computed now (`id` null). A window below "
                           "the minimum (`MONITORING_MIN_ROWS`, see `minimum`) carries counts "
                           "only and a `note`: no drift, decision mix or outcome metrics. The "
                           "Prometheus gauges on /metrics come from the stored report.",
            "parameters": [
                {"name": "last", "in": "query", "required": False,
                 "description": "Compute the newest N predictions now.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": max_rows}},
                {"name": "days", "in": "query", "required": False,
                 "description": "Compute the predictions of the last D days now (their "
                                "newest N with `last`).",
                 "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                            "maximum": 3660}},
            ],
            "responses": {"200": _json("MonitoringReport", "The report."),
                          **_errors(400, 404, 503)}}},
    }


def monitoring_schemas(card: dict[str, Any]) -> dict[str, Any]:
    """Schemas of the feedback request and answer and of the monitoring report."""
    target = (card.get("spec") or {}).get("target") or {}
    outcomes = [v for v in (target.get("negative"), target.get("positive")) if v]
    outcome: dict[str, Any] = {"type": "string", "description": "What happened: the spec's "
                               "target values (negative = repaid, positive = defaulted)."}
    if outcomes:
        outcome["enum"] = outcomes
    prediction_id = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$",
                     "description": "The `prediction_id` the prediction answered."}
    index = {"type": "integer", "minimum": 0, "maximum": 999999, "default": 0,
             "description": "Position of the applicant in a batch (0 for one applicant)."}
    return {
        "Feedback": {"type": "object", "required": ["prediction_id", "outcome"],
                     "additionalProperties": False,
                     "properties": {
                         "prediction_id": prediction_id, "outcome": outcome, "index": index,
                         "correction": {"type": "boolean", "default": False,
                                        "description": "Change an outcome already recorded "
                                        "(scope `feedback:correct`; kept in the audit "
                                        "trail)."},
                         "reason": {"type": "string", "minLength": 3, "maxLength": 500,
                                    "description": "Why (read for a correction only)."}},
                     # A correction needs its reason.
                     "anyOf": [{"properties": {"correction": {"enum": [False]}}},
                               {"required": ["correction", "reason"]}],
                     "example": {"prediction_id": "0192f3a1c2d4e5f60718293a4b5c6d7e",
                                 "outcome": outcomes[0] if outcomes else "good",
                                 "index": 0}},
        "FeedbackResponse": {"type": "object",
                             "required": ["prediction_id", "index", "outcome", "status"],
                             "properties": {"prediction_id": {"type": "string"},
                                            "index": {"type": "integer"},
                                            "outcome": {"type": "string"},
                                            "status": {"type": "string",
                                                       "enum": ["created", "unchanged",
                                                                "corrected"]}}},
        "MonitoringReport": {
            "type": "object",
            "required": ["id", "created_at", "age_seconds", "model", "window", "minimum",
                         "drift", "decisions", "outcomes"],
            "properties": {
                "id": {"type": "integer", "nullable": True,
                       "description": "The stored report's id; null for a window computed "
                                      "on request."},
                "created_at": {"type": "string", "format": "date-time"},
                "age_seconds": {"type": "number", "minimum": 0},
                "model": {"$ref": REF + "ModelRef"},
                "window": {"type": "object", "required": ["rows"],
                           "properties": {"rows": {"type": "integer"}}},
                "minimum": {"type": "object", "description": "The minimum window: rows for "
                            "any figure, labelled rows (and per class) for outcome metrics."},
                "note": {"type": "string", "description": "Why figures are missing, e.g. "
                         "\"too few predictions to describe (1 < 200)\"."},
                "drift": {"type": "object", "nullable": True,
                          "description": "`score` and `features` entries: psi, band "
                                         "(stable < 0.10 <= watch <= 0.25 < act), expected "
                                         "and actual bin shares; null below the minimum "
                                         "window."},
                "summary": {"type": "object", "nullable": True},
                "decisions": {"type": "object", "nullable": True,
                              "description": "Count and share per decision; null below the "
                                             "minimum window."},
                "outcomes": {"type": "object", "description": "Labelled counts and, above "
                             "the outcome minimum with both classes, roc_auc, ks, brier, "
                             "bad_rate_among_approved, confusion_matrix, expected_cost."},
            }},
    }


def build_openapi(spec: DatasetSpec | None, card: dict[str, Any] | None,
                  max_batch: int, max_reasons: int = 4,
                  max_monitoring_rows: int = 10000) -> dict[str, Any]:
    """The whole OpenAPI 3.0 document for a model (or a stub when none is loaded)."""
    card = card or {}
    if spec is not None:
        example = card.get("example") or example_record(spec)
        applicant = applicant_schema(spec, example)
    else:
        example = {}
        applicant = {"type": "object", "description": "The model is not loaded, so its "
                     "features are unknown; see GET /ready."}
    schemas = {
        "Applicant": applicant,
        "BatchRequest": {"type": "object", "required": ["instances"],
                         "additionalProperties": False,
                         "properties": {"instances": {
                             "type": "array", "minItems": 1, "maxItems": max_batch,
                             "items": {"$ref": REF + "Applicant"}}}},
        **result_schemas(card, max_reasons),
        **envelope_schemas(),
        "Ready": {"type": "object", "required": ["status", "model"],
                  "properties": {"status": {"type": "string", "enum": ["ready"]},
                                 "model": {"$ref": REF + "ModelRef"},
                                 "store": {"type": "string", "enum": ["ok", "degraded"],
                                           "description": "The prediction store (degraded: "
                                           "predictions wait in the spool); informs, "
                                           "never fails readiness."}}},
        **monitoring_schemas(card),
        "ModelCard": {"type": "object",
                      "required": ["name", "version", "created_at", "threshold"],
                      "description": "The artifact's model card as written at training."},
    }
    document = {
        "openapi": "3.0.3",
        "security": [{"bearer": []}],
        "info": {"title": "Credit risk API", "version": _package_version(),
                 "description": _description(card)},
        "paths": {**paths(max_batch, example), **monitoring_paths(max_monitoring_rows)},
        "components": {
            "schemas": schemas,
            "responses": {f"Error{code}": _json("Error", text)
                          for code, text in ERROR_STATUSES.items()},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key (`python -m app keys create`) or an OpenID "
                               "Connect access token (JWT) of the configured issuer."}},
        },
    }
    secure(document["paths"])
    return document


# Path -> the endpoint whose scope app.auth requires (the documented routes).
PATH_ENDPOINTS = {"/predict": "api.predict", "/model": "api.model_card",
                  "/ready": "api.ready", "/health_check": "api.health_check",
                  "/metrics": "metrics", "/feedback": "monitoring.feedback",
                  "/monitoring": "monitoring.monitoring"}
RATE_LIMITED = ("/predict", "/feedback")


def secure(paths: dict[str, Any]) -> None:
    """Mark each operation with what :mod:`app.auth` requires: open ones get
    ``security: []``, the others their scope and the 401/403 (and 429) answers."""
    from app.auth import ENDPOINT_SCOPES, OPEN

    for path, operations in paths.items():
        scope = ENDPOINT_SCOPES.get(PATH_ENDPOINTS.get(path, ""), "")
        for operation in operations.values():
            if scope is OPEN:
                operation["security"] = []
                continue
            operation["description"] = (operation.get("description", "") + (
                f" Needs the `{scope}` scope." if scope else " Needs any valid credential.")
                ).strip()
            operation["responses"].update(_errors(401, *((403,) if scope else ())))
            if path in RATE_LIMITED:
                operation["responses"].update(_errors(429))


def _description(card: dict[str, Any]) -> str:
    if not card:
        return "No model is loaded; GET /ready says why."
    return (f"Probability of default, decision and reason codes from model "
            f"**{card.get('name')}** version `{card.get('version')}` (trained "
            f"{card.get('created_at')}). Every error, including 404 and 405, is JSON of "
            "the `Error` shape.")


def _package_version() -> str:
    try:
        return metadata.version("credit-risk-serving")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"
