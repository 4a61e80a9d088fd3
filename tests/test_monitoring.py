"""POST /feedback and GET /monitoring: validation, idempotency, drift seen through the
real /predict, outcome metrics and the Prometheus gauges."""
from __future__ import annotations

import json

import numpy as np
import pytest

from app.errors import APIError
from app.monitoring import parse_feedback
from ml.monitoring import monitor
from ml.monitoring.report import build_report
from ml.training.train import record_from_row

from helpers import ERROR_KEYS, assert_error, metric_samples
from helpers import SECRET as SECRET_NUMBER

SECRET = str(SECRET_NUMBER)


@pytest.fixture()
def app(make_app, tmp_path):
    """A fresh app per test: its own store, so a monitoring window holds only its rows.
    The /metrics gauges re-read the store at every scrape here (test_metrics_cache.py
    tests the cache)."""
    return make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'predictions.db'}", MAX_BATCH=1000,
                    MONITORING_CACHE_SECONDS=1e-6)


@pytest.fixture(scope="module")
def applicants(dataset, spec):
    """All 1,000 real applicants as API records: the very rows of the reference bins."""
    return [record_from_row(row, spec) for _, row in dataset.X.iterrows()]


def predict(client, body, request_id):
    response = client.post("/predict?reasons=false", json=body,
                           headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def gauges(client, name):
    text = client.get("/metrics").get_data(as_text=True)
    return {tuple(sorted(s.labels.items())): s.value for s in metric_samples(text, name)}


# --------------------------------------------------------------------------- feedback


def test_feedback_is_recorded_then_idempotent_and_never_overwritten(client, example):
    req = predict(client, example, "req-1")["prediction_id"]
    first = client.post("/feedback", json={"prediction_id": req, "outcome": "bad"})
    assert first.status_code == 200
    assert first.get_json() == {"prediction_id": req, "index": 0, "outcome": "bad",
                                "status": "created"}
    again = client.post("/feedback", json={"prediction_id": req, "outcome": "bad"})
    assert again.status_code == 200 and again.get_json()["status"] == "unchanged"
    body = assert_error(client.post("/feedback", json={"prediction_id": req,
                                                       "outcome": "good"}), 409)
    assert "different outcome" in body["message"]


def test_feedback_labels_one_applicant_of_a_batch_by_index(client, app, example):
    batch = predict(client, {"instances": [example, example, example]}, "batch-1")
    assert client.post("/feedback", json={"prediction_id": batch["prediction_id"], "index": 2,
                                          "outcome": "good"}).status_code == 200
    rows = app.extensions["prediction_store"].window()
    assert [r["outcome"] for r in rows] == [None, None, "good"]


@pytest.mark.parametrize("body", [
    {"prediction_id": "never-seen", "outcome": "good"},
    {"prediction_id": "batch-2", "index": 3, "outcome": "good"},
], ids=["unknown-id", "index-beyond-the-batch"])
def test_feedback_for_an_unknown_prediction_is_404(client, example, body):
    batch = predict(client, {"instances": [example, example]}, "batch-2")
    if body["prediction_id"] == "batch-2":  # the batch's own id, one index too far
        body = {**body, "prediction_id": batch["prediction_id"]}
    assert_error(client.post("/feedback", json=body), 404)
    # Its correlation id is no key either: feedback by it finds nothing.
    assert_error(client.post("/feedback", json={"prediction_id": "batch-2",
                                                "outcome": "good"}), 404)


@pytest.mark.parametrize("body, fields", [
    ({"outcome": "good"}, ["prediction_id"]),
    ({"prediction_id": "r"}, ["outcome"]),
    ({"prediction_id": "r", "outcome": SECRET}, ["outcome"]),
    ({"prediction_id": "r", "outcome": "GOOD"}, ["outcome"]),
    ({"prediction_id": int(SECRET), "outcome": "good"}, ["prediction_id"]),
    ({"prediction_id": "has space", "outcome": "good"}, ["prediction_id"]),
    ({"prediction_id": "x" * 129, "outcome": "good"}, ["prediction_id"]),
    ({"prediction_id": "r", "outcome": "good", "index": -1}, ["index"]),
    ({"prediction_id": "r", "outcome": "good", "index": 1.5}, ["index"]),
    ({"prediction_id": "r", "outcome": "good", "index": True}, ["index"]),
    ({"prediction_id": "r", "outcome": "good", SECRET: 1}, [SECRET]),
    ({"prediction_id": None, "outcome": None, "index": "0"}, ["prediction_id", "outcome", "index"]),
    ([], ["body"]),
    ("bad", ["body"]),
])
def test_invalid_feedback_is_400_naming_each_field_without_echoing_values(client, body,
                                                                          fields):
    response = client.post("/feedback", json=body)
    assert response.status_code == 400
    details = response.get_json()["details"]
    assert [d["field"] for d in details] == [f for f in fields if f != SECRET] + (
        [SECRET] if SECRET in fields else [])
    assert set(response.get_json()) == ERROR_KEYS
    if SECRET not in fields:
        assert SECRET not in response.get_data(as_text=True)


@pytest.mark.parametrize("outcome", [1, "yes", None])
def test_outcome_problem_quotes_the_allowed_strings_of_a_numeric_target(outcome):
    with pytest.raises(APIError) as err:
        parse_feedback({"prediction_id": "r", "outcome": outcome}, ("0", "1"))
    assert err.value.details == [{"field": "outcome",
                                  "problem": 'must be a string, one of: "0", "1"'}]


@pytest.mark.parametrize("data, content_type, status", [
    (b"", "application/json", 400),
    (b"{not json", "application/json", 400),
    (b'{"prediction_id": "r", "outcome": NaN}', "application/json", 400),
    (b'{"prediction_id": "r", "outcome": "good"}', "text/plain", 415),
])
def test_feedback_rejects_bodies_that_are_not_json(client, data, content_type, status):
    assert_error(client.post("/feedback", data=data, content_type=content_type), status)


# --------------------------------------------------------------------------- monitoring


@pytest.mark.parametrize("query", [
    "last=0", "last=-3", "last=abc", "last=1.5", "last=100001", "days=0", "days=-1",
    "days=nan", "days=inf", "days=x", "days=4000", "since=3", f"last={SECRET}{SECRET}",
])
def test_monitoring_rejects_bad_query_parameters(client, query):
    body = assert_error(client.get(f"/monitoring?{query}"), 400)
    assert body["details"]


def run_job(app, model_dir, tmp_path, *args):
    """``python -m ml monitor`` on the app's store (its rows written first); the id it
    printed."""
    from ml.__main__ import main

    app.extensions["prediction_store"].flush()  # the job reads the database, not the spool
    out = tmp_path / "job"
    assert main(["monitor", "--database-url", app.config["DATABASE_URL"], "--model",
                 str(model_dir), "--out", str(out), "--no-plots", *args]) == 0
    return json.loads((out / "monitoring.json").read_text())


def test_monitoring_before_any_report_is_404_saying_how_to_make_one(client):
    body = assert_error(client.get("/monitoring"), 404)
    assert "python -m ml monitor" in body["message"] and "?last=N" in body["message"]


def test_a_computed_window_of_an_empty_store_has_counts_only(client):
    body = client.get("/monitoring?last=5").get_json()
    assert body["window"]["rows"] == 0 and body["id"] is None
    assert body["drift"] is None and body["outcomes"]["metrics"] is None
    assert body["note"] == "too few predictions to describe (0 < 200)"


def test_shifted_credit_amounts_show_as_drift_on_that_feature_only(
        app, client, applicants, spec, tmp_path, trained_model_dir):
    shifted = [{**a, "credit_amount": min(a["credit_amount"] * 3, 50000)} for a in applicants]
    predict(client, {"instances": shifted}, "shifted")
    body = client.get("/monitoring?last=1000").get_json()
    features = body["drift"]["features"]
    assert body["window"]["rows"] == 1000
    assert features["credit_amount"]["psi"] > 0.25
    assert features["credit_amount"]["band"] == "act"
    assert body["summary"]["features_to_act_on"] == ["credit_amount"]
    for name in spec.feature_names:
        if name != "credit_amount":
            assert features[name]["psi"] < 0.10, name
            assert features[name]["band"] == "stable"
    # Computing a window sets no gauge: they come from the job's stored report only.
    assert gauges(client, "credit_api_psi") == {}
    run_job(app, trained_model_dir, tmp_path, "--last", "1000")
    stored = client.get("/monitoring").get_json()
    assert stored["drift"] == body["drift"] and stored["id"] >= 1
    assert 0 <= stored["age_seconds"] < 60
    # The same figures are Prometheus gauges.
    psi = gauges(client, "credit_api_psi")
    assert psi[(("feature", "credit_amount"),)] == pytest.approx(features["credit_amount"]["psi"])
    assert psi[(("feature", "duration_in_month"),)] < 0.10
    assert gauges(client, "credit_api_score_psi")[()] == pytest.approx(
        body["drift"]["score"]["psi"])


def test_unshifted_real_applicants_are_stable_everywhere(client, applicants):
    predict(client, {"instances": applicants}, "same")
    body = client.get("/monitoring?last=1000").get_json()
    assert body["summary"]["features_to_act_on"] == []
    assert body["summary"]["max_feature_psi"] < 0.10
    assert body["decisions"]["approve"]["count"] + body["decisions"]["decline"]["count"] == 1000


def label(client, answer, outcomes):
    for i, outcome in enumerate(outcomes):
        assert client.post("/feedback", json={"prediction_id": answer["prediction_id"],
                                              "index": i,
                                              "outcome": outcome}).status_code == 200


def test_outcome_metrics_match_the_evaluation_functions(client, applicants, dataset, app,
                                                        tmp_path, trained_model_dir):
    answer = predict(client, {"instances": applicants[:400]}, "labelled")
    label(client, answer, ["bad" if y else "good" for y in dataset.y[:400]])
    body = client.get("/monitoring?days=1").get_json()
    metrics = body["outcomes"]["metrics"]
    from sklearn.metrics import roc_auc_score
    p = np.array([r["probability_of_default"] for r in answer["predictions"]])
    y = dataset.y[:400]
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    threshold = app.extensions["credit_model"].predictor.threshold
    approved = p < threshold
    assert metrics["bad_rate_among_approved"] == pytest.approx(y[approved].mean())
    matrix = metrics["confusion_matrix"]
    assert sum(matrix["actual_bad"]) == y.sum() and sum(matrix["actual_good"]) == 400 - y.sum()
    assert 0 < metrics["ks"] <= 1
    assert body["outcomes"]["labelled"] == 400
    run_job(app, trained_model_dir, tmp_path, "--days", "1")
    outcome = gauges(client, "credit_api_outcome_metric")
    for name in ("roc_auc", "ks", "brier", "bad_rate_among_approved", "expected_cost"):
        assert outcome[(("metric", name),)] == pytest.approx(metrics[name]), name
    card = app.extensions["credit_model"].predictor.card
    reference = gauges(client, "credit_api_reference_metric")
    assert reference[(("metric", "roc_auc"),)] == pytest.approx(
        card["metrics"]["test"]["roc_auc"])
    assert gauges(client, "credit_api_monitoring_labelled")[()] == 400
    assert gauges(client, "credit_api_monitoring_rows")[()] == 400


def test_one_class_of_outcomes_reports_counts_without_ranking_metrics(client, applicants):
    answer = predict(client, {"instances": applicants[:250]}, "only-good")
    label(client, answer, ["good"])
    outcomes = client.get("/monitoring?last=250").get_json()["outcomes"]
    assert outcomes["labelled"] == 1 and outcomes["good"] == 1
    assert outcomes["metrics"] is None


@pytest.mark.parametrize("labelled, bad, expected", [
    (199, 60, False),  # fewer than MONITORING_MIN_LABELLED
    (220, 9, False),  # enough, but fewer than 10 of a class
    (220, 10, True),
])
def test_outcome_metrics_need_the_minimum_of_labelled_rows_of_both_classes(
        client, applicants, labelled, bad, expected):
    answer = predict(client, {"instances": applicants[:250]}, "minimum")
    label(client, answer, ["bad"] * bad + ["good"] * (labelled - bad))
    outcomes = client.get("/monitoring?last=250").get_json()["outcomes"]
    assert outcomes["labelled"] == labelled
    assert (outcomes["metrics"] is not None) is expected
    if not expected:
        assert outcomes["note"].startswith("outcome metrics need 200 labelled predictions")


def test_a_window_of_one_applicant_never_shows_its_bins_or_its_decision(
        app, client, example, tmp_path, trained_model_dir):
    answer = predict(client, example, "alone")
    decision = answer["predictions"][0]["decision"] if "predictions" in answer else \
        answer["decision"]
    label(client, answer, ["bad"])
    stored = run_job(app, trained_model_dir, tmp_path, "--last", "10")
    served = client.get("/monitoring")
    computed = client.get("/monitoring?last=1")
    for response in (served, computed):
        body = response.get_json()
        assert body["window"]["rows"] == 1
        assert body["note"] == "too few predictions to describe (1 < 200)"
        assert body["drift"] is body["decisions"] is body["summary"] is None
        assert body["outcomes"] == {"labelled": 1, "metrics": None, "note": body["note"]}
        text = response.get_data(as_text=True)
        assert decision not in text and '"bad"' not in text
    assert served.get_json()["drift"] is stored["drift"] is None
    # The gauges say how many, and nothing about the one applicant.
    assert gauges(client, "credit_api_monitoring_rows")[()] == 1
    for name in ("credit_api_psi", "credit_api_score_psi", "credit_api_decision_share",
                 "credit_api_outcome_metric"):
        assert gauges(client, name) == {}, name


def test_the_minimum_window_is_a_setting_of_the_api_and_an_option_of_the_job(
        make_app, tmp_path, applicants, trained_model_dir, monkeypatch):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", MONITORING_MIN_ROWS=5)
    client = app.test_client()
    predict(client, {"instances": applicants[:5]}, "five")
    assert client.get("/monitoring?last=5").get_json()["drift"] is not None
    assert run_job(app, trained_model_dir, tmp_path, "--min-rows", "6")["drift"] is None
    monkeypatch.setenv("MONITORING_MIN_ROWS", "5")  # the API's ConfigMap, seen by the job
    assert run_job(app, trained_model_dir, tmp_path)["drift"] is not None
    monkeypatch.setenv("MONITORING_MIN_ROWS", "zero")
    from ml.__main__ import main
    assert main(["monitor", "--database-url", app.config["DATABASE_URL"], "--model",
                 str(trained_model_dir), "--out", str(tmp_path / "x")]) == 2


# --------------------------------------------------------------------------- batch job


def test_monitor_job_writes_a_json_report_psi_plots_and_the_stored_report(
        app, client, applicants, tmp_path, trained_model_dir, capsys):
    from ml.__main__ import main

    shifted = [{**a, "duration_in_month": 120} for a in applicants]
    predict(client, {"instances": shifted}, "job")
    app.extensions["prediction_store"].flush()  # the job reads the database, not the queue
    out = tmp_path / "report"
    capsys.readouterr()
    code = main(["monitor", "--database-url", app.config["DATABASE_URL"], "--model",
                 str(trained_model_dir), "--last", "1000", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "monitoring.json").read_text())
    assert report["summary"]["features_to_act_on"] == ["duration_in_month"]
    assert report["window"] == {**report["window"], "last": 1000, "rows": 1000}
    for name in ("psi_features.png", "psi_score.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    served = client.get("/monitoring").get_json()
    assert served["id"] == printed["report_id"]
    assert {k: v for k, v in served.items() if k not in ("id", "created_at", "age_seconds")} \
        == json.loads(json.dumps(report))
    # --no-store writes the file only: the API still serves the report above.
    assert main(["monitor", "--database-url", app.config["DATABASE_URL"], "--model",
                 str(trained_model_dir), "--last", "10", "--out", str(out), "--no-plots",
                 "--no-store"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report_id"] is None
    assert client.get("/monitoring").get_json()["id"] == printed["report_id"]


def test_report_builder_is_pure_and_handles_no_rows(trained_model_dir):
    from ml.serving.artifact import read_card
    report = build_report(read_card(trained_model_dir), [], {"last": 5})
    assert report["window"]["rows"] == 0 and report["window"]["last"] == 5
    assert monitor.save_plots(report, trained_model_dir / "unused") == []


def test_monitor_job_reports_an_unreachable_store_in_one_line(trained_model_dir, capsys):
    from ml.__main__ import main

    code = main(["monitor", "--database-url", "postgresql+psycopg://u:p@127.0.0.1:1/x",
                 "--model", str(trained_model_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: the prediction store is unavailable")
    assert "Traceback" not in err and ":p@" not in err
