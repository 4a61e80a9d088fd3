"""Behaviour of each endpoint through Flask's test client, and every class of bad input."""
from __future__ import annotations

import json

import pytest

from helpers import SECRET, assert_error, metric_value

pytestmark = pytest.mark.app_settings(MAX_BATCH=5, MAX_CONTENT_LENGTH=64 * 1024)


# --------------------------------------------------------------------------- endpoints


def test_health_check_is_ok(client):
    response = client.get("/health_check")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_names_the_loaded_model(client, app):
    predictor = app.extensions["credit_model"].predictor
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "model": {
        "name": predictor.name, "version": predictor.version}, "store": "ok"}


def test_model_card_has_metrics_threshold_features_versions_and_date(client):
    card = client.get("/model").get_json()
    for key in ("name", "version", "created_at", "threshold", "grades", "metrics", "spec",
                "libraries", "model"):
        assert key in card
    assert [f["name"] for f in card["spec"]["features"]]


RISKY = {"status_of_existing_checking_account": "below_0_dm", "duration_in_month": 60,
         "credit_amount": 15000, "savings_account_and_bonds": "unknown_or_none"}


def test_predict_one_applicant_returns_one_result(client, app, example):
    predictor = app.extensions["credit_model"].predictor
    response = client.post("/predict", json={**example, **RISKY})
    assert response.status_code == 200
    body = response.get_json()
    assert 0.0 <= body["probability_of_default"] <= 1.0
    assert body["decision"] == ("decline" if body["probability_of_default"] >= predictor.threshold
                                else "approve")
    assert body["risk_grade"] in [g["grade"] for g in predictor.card["grades"]]
    assert 1 <= len(body["reasons"]) <= 4
    assert set(body["reasons"][0]) == {"feature", "label", "value", "impact", "text"}
    assert body["model"] == {"name": predictor.name, "version": predictor.version}
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Server-Timing"].startswith("app;dur=")


def test_predict_matches_the_predictor(client, app, example):
    predictor = app.extensions["credit_model"].predictor
    expected = predictor.predict([example], reasons=False)[0]
    body = client.post("/predict?reasons=false", json=example).get_json()
    assert body["probability_of_default"] == pytest.approx(expected["probability_of_default"])
    assert body["decision"] == expected["decision"]


@pytest.mark.parametrize("flag", ["false", "0", "no", "FALSE"])
def test_predict_without_reasons_skips_them(client, example, flag):
    body = client.post(f"/predict?reasons={flag}", json=example).get_json()
    assert not body.get("reasons")


def test_predict_batch_returns_predictions_in_order(client, example):
    older = {**example, "age_in_years": 70}
    response = client.post("/predict", json={"instances": [example, older, example]})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"predictions", "model", "request_id", "prediction_id"}
    first, _, third = body["predictions"]
    assert len(body["predictions"]) == 3
    assert first == third


def test_predict_accepts_a_batch_of_exactly_max_batch(client, example):
    response = client.post("/predict", json={"instances": [example] * 5})
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 5


@pytest.mark.parametrize("incoming,echoed", [
    ("abc-123", True),
    ("3f2b8c1e-9d4a-4f5e-8a7b-1c2d3e4f5a6b", True),
    ("trace.id:42_x", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("has space", False),
    ('quote"inject', False),
    ("", False),
])
def test_request_id_is_echoed_only_when_sane(client, example, incoming, echoed):
    response = client.post("/predict", json=example, headers={"X-Request-ID": incoming})
    returned = response.headers["X-Request-ID"]
    assert response.get_json()["request_id"] == returned
    if echoed:
        assert returned == incoming
    else:
        assert returned != incoming and len(returned) == 32


def test_every_response_carries_a_request_id(client):
    assert client.get("/nope").headers["X-Request-ID"]
    assert client.get("/health_check", headers={"X-Request-ID": "ok-1"}).headers[
        "X-Request-ID"] == "ok-1"


def test_metrics_count_requests_decisions_and_pds(client, example):
    before_req = metric_value(client, "credit_api_requests_total", endpoint="/predict",
                              method="POST", status="200")
    decision = client.post("/predict", json=example).get_json()["decision"]
    before_dec = metric_value(client, "credit_api_decisions_total", decision=decision)
    before_pd = metric_value(client, "credit_api_probability_of_default_count")
    client.post("/predict", json={"instances": [example, example]})
    assert metric_value(client, "credit_api_requests_total", endpoint="/predict",
                        method="POST", status="200") == before_req + 2
    assert metric_value(client, "credit_api_decisions_total", decision=decision) == before_dec + 2
    assert metric_value(client, "credit_api_probability_of_default_count") == before_pd + 2


def test_metrics_report_latency_model_info_and_errors(client, app):
    predictor = app.extensions["credit_model"].predictor
    client.post("/predict", data="{", content_type="application/json")
    assert metric_value(client, "credit_api_requests_total", endpoint="/predict",
                        status="400") >= 1
    assert metric_value(client, "credit_api_request_duration_seconds_count",
                        endpoint="/predict") >= 1
    assert metric_value(client, "credit_api_model_info", name=predictor.name,
                        version=predictor.version) == 1
    assert metric_value(client, "credit_api_model_ready") == 1


def test_unknown_routes_are_bucketed_in_metrics(client):
    client.get("/some/secret/path/123")
    text = client.get("/metrics").get_data(as_text=True)
    assert "secret" not in text
    assert 'endpoint="<unmatched>"' in text


# --------------------------------------------------------------------------- bad input


def _with(example, **changes):
    return {**example, **changes}


def _without(example, name):
    return {k: v for k, v in example.items() if k != name}


# (id, body as a function of the example: dict/list -> JSON, str/bytes -> raw,
#  expected fields named in details; None = do not check details)
BAD_BODIES = [
    ("malformed_json", lambda ex: '{"age_in_years": ', None),
    ("truncated_object", lambda ex: json.dumps(ex)[:-1], None),
    ("nan", lambda ex: json.dumps(_with(ex, age_in_years=float("nan"))), None),
    ("infinity", lambda ex: json.dumps(_with(ex, credit_amount=float("inf"))), None),
    ("minus_infinity", lambda ex: json.dumps(_with(ex, credit_amount=float("-inf"))), None),
    ("empty_body", lambda ex: "", None),
    ("whitespace_body", lambda ex: "   ", None),
    ("invalid_utf8", lambda ex: b'{"purpose": "\xff\xfe"}', None),
    ("deep_nesting", lambda ex: "[" * 20_000 + "]" * 20_000, None),
    ("top_level_array", lambda ex: [ex], ["body"]),
    ("top_level_string", lambda ex: '"car_new"', ["body"]),
    ("top_level_number", lambda ex: SECRET, ["body"]),
    ("top_level_null", lambda ex: None, ["body"]),
    ("empty_object", lambda ex: {}, None),
    ("missing_field", lambda ex: _without(ex, "age_in_years"), ["age_in_years"]),
    ("unknown_field", lambda ex: _with(ex, favourite_colour=SECRET), ["favourite_colour"]),
    ("protected_attribute", lambda ex: _with(ex, personal_status_and_sex="male_single"),
     ["personal_status_and_sex"]),
    ("string_for_number", lambda ex: _with(ex, age_in_years=str(SECRET)), ["age_in_years"]),
    ("number_for_category", lambda ex: _with(ex, purpose=SECRET), ["purpose"]),
    ("unknown_category", lambda ex: _with(ex, purpose=f"yacht{SECRET}"), ["purpose"]),
    ("category_in_wrong_case", lambda ex: _with(ex, housing="OWN"), ["housing"]),
    ("below_minimum", lambda ex: _with(ex, age_in_years=17), ["age_in_years"]),
    ("above_maximum", lambda ex: _with(ex, age_in_years=101), ["age_in_years"]),
    ("negative_amount", lambda ex: _with(ex, credit_amount=-SECRET), ["credit_amount"]),
    ("fraction_for_integer", lambda ex: _with(ex, duration_in_month=12.5),
     ["duration_in_month"]),
    ("boolean_for_number", lambda ex: _with(ex, age_in_years=True), ["age_in_years"]),
    ("boolean_for_category", lambda ex: _with(ex, telephone=False), ["telephone"]),
    ("null_value", lambda ex: _with(ex, age_in_years=None), ["age_in_years"]),
    ("nested_object", lambda ex: _with(ex, age_in_years={"$gt": SECRET}), ["age_in_years"]),
    ("nested_array", lambda ex: _with(ex, purpose=[SECRET]), ["purpose"]),
    # The raw bodies drop the field first: a repeated key is refused for that alone.
    ("huge_float", lambda ex: json.dumps(_without(ex, "credit_amount"))[:-1]
     + ', "credit_amount": 1e400}', None),
    ("huge_integer", lambda ex: _with(ex, credit_amount=10 ** 400), ["credit_amount"]),
    ("overlong_integer_literal",
     lambda ex: json.dumps(_without(ex, "credit_amount"))[:-1] + ', "credit_amount": '
     + "9" * 5000 + "}", ["credit_amount"]),
    ("long_unknown_field_name", lambda ex: _with(ex, **{"k" * 500: 1}), ["(long name)"]),
    ("several_problems", lambda ex: _with(_without(ex, "job"), age_in_years=5, purpose="x"),
     ["job", "age_in_years", "purpose"]),
    ("batch_not_a_list", lambda ex: {"instances": ex}, ["instances"]),
    ("batch_empty", lambda ex: {"instances": []}, ["instances"]),
    ("batch_over_maximum", lambda ex: {"instances": [ex] * 6}, ["instances"]),
    ("batch_with_extra_key", lambda ex: {"instances": [ex], "note": SECRET}, ["note"]),
    ("batch_with_bad_record", lambda ex: {"instances": [ex, _with(ex, age_in_years=SECRET)]},
     ["instances[1].age_in_years"]),
    ("batch_with_non_object", lambda ex: {"instances": [ex, SECRET]}, ["instances[1]"]),
    ("batch_with_missing_field", lambda ex: {"instances": [_without(ex, "job")]},
     ["instances[0].job"]),
]


@pytest.mark.parametrize("make_body,fields", [b[1:] for b in BAD_BODIES],
                         ids=[b[0] for b in BAD_BODIES])
def test_bad_body_is_a_400_listing_every_problem(client, example, make_body, fields):
    body = make_body(example)
    if isinstance(body, (str, bytes)):
        response = client.post("/predict", data=body, content_type="application/json")
    else:
        response = client.post("/predict", data=json.dumps(body),
                               content_type="application/json")
    error = assert_error(response, 400)
    if fields is not None:
        assert sorted(d["field"] for d in error["details"]) == sorted(fields)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_body_that_is_not_json_is_a_415(client, example, content_type):
    kwargs = {"data": json.dumps(example)}
    if content_type:
        kwargs["content_type"] = content_type
    assert_error(client.post("/predict", **kwargs), 415)


def test_json_with_charset_is_accepted(client, example):
    response = client.post("/predict", data=json.dumps(example),
                           content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_body_over_the_limit_is_a_413(client, example):
    big = {"instances": [example] * 200}  # > 64 KiB in this app's config
    assert_error(client.post("/predict", json=big), 413)


def test_bad_reasons_flag_is_a_400(client, example):
    body = assert_error(client.post("/predict?reasons=perhaps", json=example), 400)
    assert body["details"] == [{"field": "reasons", "problem": "must be true or false"}]


def test_unknown_route_is_a_json_404(client):
    assert_error(client.get(f"/no/such/{SECRET}"), 404)


@pytest.mark.parametrize("method,path", [("get", "/predict"), ("put", "/predict"),
                                         ("delete", "/predict"), ("post", "/ready"),
                                         ("post", "/health_check"), ("patch", "/model")])
def test_wrong_method_is_a_json_405_with_allow(client, method, path):
    response = getattr(client, method)(path)
    assert_error(response, 405)
    assert response.headers["Allow"]


def test_an_unexpected_error_is_a_json_500_without_a_trace(client, app, example, monkeypatch):
    predictor = app.extensions["credit_model"].predictor

    def boom(records, reasons=True):
        raise RuntimeError(f"internal detail {SECRET}")

    monkeypatch.setattr(predictor, "predict", boom)
    body = assert_error(client.post("/predict", json=example), 500)
    assert "Traceback" not in body["message"]


def test_bulk_pd_observation_equals_one_observe_per_value():
    from prometheus_client import CollectorRegistry, Histogram

    from app.metrics import PD, observe_many

    values = [0.0, 0.05, 0.050001, 0.1, 0.33, 0.999, 1.0, 0.2, 0.2]
    registry = CollectorRegistry()
    one = Histogram("one", "per value", buckets=PD._upper_bounds[:-1], registry=registry)
    bulk = Histogram("bulk", "bulk", buckets=PD._upper_bounds[:-1], registry=registry)
    for v in values:
        one.observe(v)
    observe_many(bulk, values)
    samples = {m.name: [(s.name.split("_", 1)[1], s.labels, s.value) for s in m.samples
                        if not s.name.endswith("_created")]
               for m in registry.collect()}
    assert samples["one"] == samples["bulk"]
