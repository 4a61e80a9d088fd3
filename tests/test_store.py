"""The prediction store on a real SQLite file: every prediction saved, nothing lost on
restart, and an outage that neither stops predictions nor loses the audit log line."""
from __future__ import annotations

import json
import os

import pytest

from app import create_app
from app.store import PredictionStore, outcomes_frame

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def make_app(model_dir, url, **extra):
    return create_app({"MODEL_DIR": str(model_dir), "TESTING": True, "DATABASE_URL": url,
                       **extra})


@pytest.fixture()
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture()
def example(trained_model_dir):
    from ml.artifact import read_card
    return dict(read_card(trained_model_dir)["example"])


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def request_lines(text, endpoint):
    return [r for r in json_lines(text) if r.get("message") == "request"
            and r.get("endpoint") == endpoint]


def test_every_prediction_is_stored_with_id_time_model_features_pd_and_decision(
        trained_model_dir, db_url, example):
    app = make_app(trained_model_dir, db_url)
    client = app.test_client()
    single = client.post("/predict", json=example, headers={"X-Request-ID": "one"}).get_json()
    batch = client.post("/predict", json={"instances": [example, {**example,
                                                                  "credit_amount": 9000}]},
                        headers={"X-Request-ID": "two"}).get_json()
    rows = app.extensions["prediction_store"].window()
    assert [(r["request_id"], r["item"], r["batch"]) for r in rows] == [
        ("one", 0, False), ("two", 0, True), ("two", 1, True)]
    assert rows[0]["features"] == example
    assert rows[2]["features"]["credit_amount"] == 9000
    assert rows[0]["probability_of_default"] == pytest.approx(single["probability_of_default"])
    assert [r["decision"] for r in rows[1:]] == [p["decision"] for p in batch["predictions"]]
    assert {r["model_version"] for r in rows} == {single["model"]["version"]}
    assert all(r["created_at"] is not None and r["outcome"] is None for r in rows)


def test_ready_reports_the_store_ok(trained_model_dir, db_url):
    body = make_app(trained_model_dir, db_url).test_client().get("/ready").get_json()
    assert body["status"] == "ready" and body["store"] == "ok"


def test_rows_and_feedback_survive_a_restart_on_the_same_database(trained_model_dir, db_url,
                                                                  example):
    first = make_app(trained_model_dir, db_url).test_client()
    assert first.post("/predict", json=example, headers={"X-Request-ID": "kept"}).status_code == 200
    assert first.post("/feedback", json={"request_id": "kept", "outcome": "bad"}
                      ).status_code == 200

    again = make_app(trained_model_dir, db_url)
    rows = again.extensions["prediction_store"].window()
    assert [(r["request_id"], r["outcome"]) for r in rows] == [("kept", "bad")]
    answer = again.test_client().post("/feedback", json={"request_id": "kept", "outcome": "bad"})
    assert answer.get_json()["status"] == "unchanged"


@pytest.mark.parametrize("url", [
    "sqlite:////nonexistent-dir/for/sure/predictions.db",   # cannot be created
    "postgresql+psycopg://nobody:x@127.0.0.1:9/none",        # nothing listens on port 9
], ids=["unwritable-sqlite", "unreachable-postgres"])
def test_a_store_outage_keeps_predictions_and_the_audit_line(trained_model_dir, url, example,
                                                             capsys):
    app = make_app(trained_model_dir, url)
    client = app.test_client()
    capsys.readouterr()
    for _ in range(3):  # the later ones skip the store during the retry back-off
        response = client.post("/predict", json=example)
        assert response.status_code == 200
        assert 0 <= response.get_json()["probability_of_default"] <= 1
    lines = request_lines(capsys.readouterr().out, "/predict")
    assert len(lines) == 3
    assert all(line["stored"] is False and line["decision"] for line in lines)
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["store"] == "unavailable"
    assert client.get("/health_check").status_code == 200
    errors = client.get("/metrics").get_data(as_text=True)
    assert 'credit_api_store_errors_total{operation="write"}' in errors
    for path, kwargs in (("/monitoring", {}),
                         ("/feedback", {"json": {"request_id": "x", "outcome": "good"}})):
        answer = getattr(client, "get" if path == "/monitoring" else "post")(path, **kwargs)
        assert answer.status_code == 503
        assert set(answer.get_json()) == {"error", "message", "details"}
        assert "nobody" not in answer.get_data(as_text=True)


def test_store_comes_back_after_the_retry_pause(tmp_path, example):
    directory = tmp_path / "later"
    store = PredictionStore(f"sqlite:///{directory / 'p.db'}", retry_seconds=0)
    result = {"probability_of_default": 0.2, "decision": "approve"}
    assert store.status() == "unavailable"
    directory.mkdir()
    assert store.status() == "ok"
    assert store.save("r", [example], [result], "m", "v", False) == 1


def test_a_forked_process_gets_its_own_engine(tmp_path, example):
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    parent = store.engine()
    result = {"probability_of_default": 0.2, "decision": "approve"}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            ok = (store.engine() is not parent
                  and store.save("child", [example], [result], "m", "v", False) == 1)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.engine() is parent
    assert [r["request_id"] for r in store.window()] == ["child"]


@pytest.mark.parametrize("last, days, expected", [
    (None, None, ["a", "b", "c"]),
    (2, None, ["b", "c"]),
    (None, 1.0, ["c"]),
    (5, 10.0, ["b", "c"]),
])
def test_window_selects_the_newest_rows_oldest_first(tmp_path, example, last, days, expected):
    from datetime import datetime, timedelta, timezone
    now = datetime.now(timezone.utc)
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    result = {"probability_of_default": 0.2, "decision": "approve"}
    for request_id, age in (("a", 30), ("b", 5), ("c", 0.5)):
        store.save(request_id, [example], [result], "m", "v", False,
                   now=now - timedelta(days=age))
    assert [r["request_id"] for r in store.window(last=last, days=days)] == expected


def test_labelled_rows_become_a_frame_of_spec_columns(spec, example):
    rows = [{"features": {**example, "credit_amount": None}, "outcome": "bad"},
            {"features": example, "outcome": "good"},
            {"features": example, "outcome": None}]
    X, y = outcomes_frame(rows, spec)
    assert list(X.columns) == spec.feature_names
    assert y.tolist() == [1, 0]
    assert X["credit_amount"].isna().tolist() == [True, False]


def test_a_reused_request_id_keeps_both_predictions_and_feedback_labels_the_newest(
        trained_model_dir, db_url, example):
    app = make_app(trained_model_dir, db_url)
    client = app.test_client()
    for amount in (1000, 2000):
        response = client.post("/predict", json={**example, "credit_amount": amount},
                               headers={"X-Request-ID": "reused"})
        assert response.status_code == 200
    assert client.post("/feedback", json={"request_id": "reused", "outcome": "good"}
                       ).status_code == 200
    rows = app.extensions["prediction_store"].window()
    assert [(r["features"]["credit_amount"], r["outcome"]) for r in rows] == [
        (1000, None), (2000, "good")]
    assert client.get("/ready").get_json()["store"] == "ok"
