"""The prediction service: plain functions between the HTTP view and the predictor.

Reading the body, validating the applicants, predicting and shaping the answer are
each a function here, testable without HTTP. The per-request path is kept lean on
purpose: plain-Python validation from the spec (no jsonschema, no pandas), stdlib JSON.

Extending "a prediction was made": connect to :data:`prediction_made`, e.g. in a
module's ``init_app``::

    services.prediction_made.connect(save_predictions, app)

Receivers get the app as sender and keyword arguments ``request_id`` (the client's
correlation id), ``prediction_id`` (issued by the server: the key outcomes are recorded
against), ``client`` (who asked), ``records`` (validated applicants), ``results`` (one
dict per applicant), ``model_name``, ``model_version`` and ``batch``; they run inside the
request, after the prediction, and may return a dict of fields for the request's log line.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Mapping

from blinker import Namespace

from app import metrics
from app.errors import APIError
from ml.spec.schema import DatasetSpec, validate_record, validate_records

_signals = Namespace()
prediction_made = _signals.signal("prediction-made")

# A batch of junk can carry tens of thousands of problems; list enough to fix them.
MAX_DETAILS = 100
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(text: str) -> int | float:
    # Integers longer than any real amount are read as floats (inf when huge), so the
    # validator answers "must be a finite number"/"at most ..." instead of Python
    # refusing to convert more than 4,300 digits.
    return int(text) if len(text) <= 20 else float(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers of one body see two different applicants.
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("duplicate key")
    return record


# Built once: ``json.loads``/``json.dumps`` with options build a new decoder/encoder per call.
_STRICT = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
_STRICT_BIG_INTS = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int,
                                    object_pairs_hook=_unique_keys)


def decode_json(body: bytes) -> Any:
    """Parse a request body as strict JSON; raises a 400 :class:`APIError` if it is not.

    Python's ``json`` accepts ``NaN`` and ``Infinity``, which are not JSON; they are
    refused here, as are an object with a repeated key and a body that is not UTF-8
    (RFC 8259: JSON exchanged between systems is UTF-8). Pathological nesting is refused
    too. An integer of more digits than Python converts (4,300) is read as a float, so the
    validator rejects it by value; that needs a Python call per integer, so it is only the
    second try, for a body the C parser refused (the common body stays on the C parser
    alone).
    """
    if not body:
        raise APIError(400, "The request body is empty; send a JSON object.")
    try:
        text = body.decode("utf-8")
        try:
            return _STRICT.decode(text)
        except ValueError:
            return _STRICT_BIG_INTS.decode(text)
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.") from None
    except ValueError:  # includes UnicodeDecodeError and json.JSONDecodeError
        raise APIError(400, "The request body is not valid UTF-8 JSON (NaN, Infinity and "
                            "repeated keys are not allowed).") from None


def parse_reasons(args: Mapping[str, str]) -> bool:
    """The ``reasons`` query flag (default true); raises a 400 :class:`APIError` if unclear."""
    raw = args.get("reasons")
    if raw is None:
        return True
    value = _BOOL_WORDS.get(raw.strip().lower())
    if value is None:
        raise APIError(400, "The query parameter reasons must be true or false.",
                       [{"field": "reasons", "problem": "must be true or false"}])
    return value


def read_instances(payload: Any, spec: DatasetSpec,
                   max_batch: int) -> tuple[list[dict[str, Any]], bool]:
    """The applicants in a decoded body, and whether it was a batch.

    A body is one applicant object, or ``{"instances": [...]}`` with 1 to ``max_batch``
    applicants. Every problem is collected before answering, so the caller can fix
    them all at once.

    Raises:
        APIError: 400 listing each problem as ``{"field", "problem"}``.
    """
    if not isinstance(payload, dict):
        raise APIError(400, "The request body must be a JSON object: one applicant, or "
                            '{"instances": [...]}.',
                       [{"field": "body", "problem": "must be a JSON object"}])
    if "instances" not in payload:
        problems = validate_record(spec, payload)
        _raise_if(problems)
        return [payload], False
    instances = payload["instances"]
    problems = [{"field": str(k) if len(str(k)) <= 64 else "(long name)",
                 "problem": "is not a known field (a batch holds only instances)"}
                for k in payload if k != "instances"]
    if not isinstance(instances, list):
        problems.append({"field": "instances", "problem": "must be an array of applicants"})
    elif not instances:
        problems.append({"field": "instances", "problem": "must hold at least one applicant"})
    elif len(instances) > max_batch:
        problems.append({"field": "instances",
                         "problem": f"must hold at most {max_batch} applicants"})
    else:
        problems.extend(validate_records(spec, instances))
    _raise_if(problems)
    return instances, True


def _raise_if(problems: list[dict[str, str]]) -> None:
    if not problems:
        return
    count = len(problems)
    if count == 1:
        message = "The request has 1 problem."
    elif count <= MAX_DETAILS:
        message = f"The request has {count} problems."
    else:
        message = f"The request has {count} problems; the first {MAX_DETAILS} are listed."
    raise APIError(400, message, problems[:MAX_DETAILS])


def score_body(predictor: Any, body: bytes, reasons: bool, max_batch: int,
               max_reasons: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """A ``/predict`` body decoded, validated and scored: ``(records, results, batch)``.

    Raises:
        APIError: 400 when the body is not JSON or holds no valid applicants.
    """
    records, batch = read_instances(decode_json(body), predictor.spec, max_batch)
    return records, predict(predictor, records, reasons, max_reasons), batch


def predict(predictor: Any, records: list[dict[str, Any]], reasons: bool,
            max_reasons: int) -> list[dict[str, Any]]:
    """Score validated applicants; at most ``max_reasons`` reason codes each."""
    results = predictor.predict(records, reasons=reasons)
    if reasons:
        for result in results:
            if len(result.get("reasons", ())) > max_reasons:
                result["reasons"] = result["reasons"][:max_reasons]
    return results


def record_prediction(app: Any, request_id: str, predictor: Any,
                      records: list[dict[str, Any]], results: list[dict[str, Any]],
                      batch: bool, log_features: bool, prediction_id: str | None = None,
                      client: str | None = None) -> dict[str, Any]:
    """Everything that follows a prediction: metrics and the signal; returns the fields
    for the request's log line (the receivers' among them), ``prediction_id`` included."""
    if batch:
        fields: dict[str, Any] = {"count": len(results),
                                  "decisions": dict(Counter(r["decision"] for r in results))}
    else:
        first = results[0]
        fields = {"probability_of_default": first["probability_of_default"],
                  "decision": first["decision"], "risk_grade": first["risk_grade"]}
    if log_features:
        fields["features"] = records if batch else records[0]
    fields["prediction_id"] = prediction_id
    metrics.observe_predictions(results)
    if prediction_made.receivers:
        for _, extra in prediction_made.send(app, request_id=request_id,
                                             prediction_id=prediction_id, client=client,
                                             records=records,
                                             results=results, model_name=predictor.name,
                                             model_version=predictor.version, batch=batch):
            if extra:
                fields.update(extra)
    return fields


def response_body(predictor: Any, results: list[dict[str, Any]], batch: bool,
                  request_id: str, prediction_id: str | None = None) -> dict[str, Any]:
    """The answer: one result (single applicant) or ``predictions`` (batch), model, the
    correlation id and the prediction's id (for ``POST /feedback``)."""
    model = {"name": predictor.name, "version": predictor.version}
    ids = {"request_id": request_id, "prediction_id": prediction_id or request_id}
    if batch:
        return {"predictions": results, "model": model, **ids}
    return {**results[0], "model": model, **ids}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_COMPACT = json.JSONEncoder(separators=(",", ":"), default=_plain)


def to_json(body: Any) -> str:
    """Compact JSON, tolerating numpy scalars a predictor may return."""
    return _COMPACT.encode(body)
