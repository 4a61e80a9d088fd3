"""The factory: layered config, start-up without a usable model, JSON logs, the service
functions and the prediction hook."""
from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from app import create_app, services
from app.config import SETTINGS, load_config
from app.errors import APIError
from helpers import CLIENT_HEADERS, json_lines, request_lines


# --------------------------------------------------------------------------- config


def test_defaults_apply_without_environment():
    config = load_config(environ={})
    assert config["MAX_BATCH"] == 1000
    assert config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    assert config["LOG_FEATURES"] is False
    assert config["LOG_LEVEL"] == "INFO"
    assert config["PORT"] == 8080
    assert config["MODEL_DIR"]


def test_environment_overrides_defaults_and_test_dict_overrides_both():
    environ = {"MAX_BATCH": "50", "LOG_FEATURES": "Yes", "LOG_LEVEL": "debug",
               "MODEL_DIR": "/models/x", "MAX_CONTENT_LENGTH": "1024"}
    config = load_config(environ=environ)
    assert (config["MAX_BATCH"], config["LOG_FEATURES"], config["LOG_LEVEL"],
            config["MODEL_DIR"], config["MAX_CONTENT_LENGTH"]) == (50, True, "DEBUG",
                                                                   "/models/x", 1024)
    assert load_config({"MAX_BATCH": 7}, environ=environ)["MAX_BATCH"] == 7


def test_empty_environment_variable_means_default():
    assert load_config(environ={"MAX_BATCH": ""})["MAX_BATCH"] == 1000


@pytest.mark.parametrize("name,value", [("MAX_BATCH", "many"), ("MAX_BATCH", "0"),
                                        ("MAX_CONTENT_LENGTH", "-1"), ("PORT", "http"),
                                        ("LOG_FEATURES", "perhaps"), ("LOG_LEVEL", "loud"),
                                        ("STORE_WRITE", "later"), ("STORE_FLUSH_SECONDS", "0"),
                                        ("STORE_FLUSH_SECONDS", "nan"),
                                        ("STORE_DEADLINE_SECONDS", "-5")])
def test_bad_environment_value_fails_start_up_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        load_config(environ={name: value})


def test_every_setting_is_documented():
    assert all(doc for _, _, doc in SETTINGS.values())


def test_create_app_reads_the_environment(monkeypatch, trained_model_dir, example):  # noqa: F811
    monkeypatch.setenv("MODEL_DIR", str(trained_model_dir))
    monkeypatch.setenv("MAX_BATCH", "2")
    client = create_app().test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": CLIENT_HEADERS["Authorization"]})
    assert client.get("/ready").status_code == 200
    assert client.post("/predict", json={"instances": [example] * 3}).status_code == 400
    assert client.post("/predict", json={"instances": [example] * 2}).status_code == 200


# --------------------------------------------------------------------------- no usable model


def _tampered(name):
    def damage(src, dst):
        shutil.copytree(src, dst)
        version = (dst / "LATEST").read_text().strip()
        with open(dst / version / name, "ab") as fh:
            fh.write(b"\0")
        return dst
    return damage


def _failing_self_test(src, dst):
    shutil.copytree(src, dst)
    card_path = dst / (dst / "LATEST").read_text().strip() / "model_card.json"
    card = json.loads(card_path.read_text())
    card["self_test"]["probability_of_default"] = 1.0 - card["self_test"]["probability_of_default"]
    card_path.write_text(json.dumps(card))
    return dst


@pytest.mark.parametrize("make_dir,reason", [
    (lambda src, dst: dst, "no model artifact"),
    (_tampered("model.joblib"), "model.joblib differs from the signed manifest"),
    (_tampered("compiled_model.npz"), "compiled_model.npz differs from the signed manifest"),
    (_failing_self_test, ""),
], ids=["missing", "tampered_sklearn_pickle", "tampered_compiled_model", "self_test_fails"])
def test_app_starts_without_a_usable_model_and_says_why(tmp_path, trained_model_dir, make_app,
                                                        make_dir, reason, capsys):
    model_dir = make_dir(trained_model_dir, tmp_path / "models")
    client = make_app(MODEL_DIR=str(model_dir), TESTING=False).test_client()

    assert client.get("/health_check").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert reason in ready.get_json()["message"]
    assert set(ready.get_json()) == {"error", "message", "details"}
    for response in (client.post("/predict", json={"a": 1}), client.get("/model")):
        assert response.status_code == 503
        assert response.get_json()["error"] == "Service Unavailable"
    assert client.get("/apispec_1.json").status_code == 200
    assert "credit_api_model_ready 0.0" in client.get("/metrics").get_data(as_text=True)
    failures = [r for r in json_lines(capsys.readouterr().out)
                if r.get("message") == "model not loaded"]
    assert failures and failures[0]["level"] == "ERROR" and failures[0]["reason"]


# --------------------------------------------------------------------------- logs


def test_one_json_line_per_request_with_its_fields(client, app, example, capsys):
    capsys.readouterr()
    response = client.post("/predict", json=example, headers={"X-Request-ID": "log-test-1"})
    lines = request_lines(capsys.readouterr().out)
    assert len(lines) == 1
    line = lines[0]
    body = response.get_json()
    assert line["request_id"] == "log-test-1"
    assert (line["method"], line["endpoint"], line["status"]) == ("POST", "/predict", 200)
    assert line["level"] == "INFO" and line["timestamp"].endswith("Z")
    assert line["latency_ms"] > 0
    assert line["model_version"] == app.extensions["credit_model"].predictor.version
    assert line["probability_of_default"] == body["probability_of_default"]
    assert line["decision"] == body["decision"]
    assert "features" not in line


def test_feature_values_are_not_logged_by_default(client, example, capsys):
    capsys.readouterr()
    marked = {**example, "credit_amount": 31337}
    client.post("/predict", json=marked)
    client.post("/predict", json={**marked, "age_in_years": 31337})  # a 400 too
    assert "31337" not in capsys.readouterr().out


def test_feature_values_are_logged_when_log_features_is_on(make_app, example, capsys):
    client = make_app(LOG_FEATURES=True, TESTING=False).test_client()
    capsys.readouterr()
    client.post("/predict", json=example)
    [line] = request_lines(capsys.readouterr().out, "/predict")
    assert line["features"] == example


def test_batch_line_has_count_and_decision_mix(client, example, capsys):
    capsys.readouterr()
    client.post("/predict", json={"instances": [example] * 3})
    [line] = request_lines(capsys.readouterr().out, "/predict")
    assert line["count"] == 3
    assert sum(line["decisions"].values()) == 3
    assert "probability_of_default" not in line


def test_rejected_request_logs_the_problems_not_the_values(client, example, capsys):
    capsys.readouterr()
    client.post("/predict", json={**example, "age_in_years": 4242})
    [line] = request_lines(capsys.readouterr().out, "/predict")
    assert line["status"] == 400
    assert line["problems"] == [{"field": "age_in_years", "problem": "must be at most 100"}]


def test_every_log_record_is_one_json_line(client, capsys):
    client.get("/health_check")
    client.get("/nope")
    records = json_lines(capsys.readouterr().out)
    assert records and all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize("body", [b"NaN", b'{"a": NaN}', b'{"a": -Infinity}', b"[Infinity]",
                                  b"", b"{", b"\xff", b"[" * 5000])
def test_decode_json_refuses_what_is_not_strict_json(body):
    with pytest.raises(APIError) as info:
        services.decode_json(body)
    assert info.value.status == 400


def test_decode_json_reads_integers_python_cannot_convert_as_floats():
    assert services.decode_json(b'{"a": ' + b"9" * 5000 + b"}")["a"] == float("inf")
    assert services.decode_json(b'{"a": ' + b"9" * 400 + b"}")["a"] == 10 ** 400 - 1
    assert services.decode_json(b'{"a": 12}')["a"] == 12


@pytest.mark.parametrize("args,expected", [({}, True), ({"reasons": "true"}, True),
                                           ({"reasons": "1"}, True), ({"reasons": "no"}, False),
                                           ({"reasons": " False "}, False)])
def test_parse_reasons(args, expected):
    assert services.parse_reasons(args) is expected


def test_read_instances_tells_single_from_batch(app, example):
    spec = app.extensions["credit_model"].predictor.spec
    assert services.read_instances(example, spec, 10) == ([example], False)
    assert services.read_instances({"instances": [example]}, spec, 10) == ([example], True)


def test_read_instances_caps_the_listed_problems(app):
    spec = app.extensions["credit_model"].predictor.spec
    with pytest.raises(APIError) as info:
        services.read_instances({"instances": [{}] * 50}, spec, 100)
    assert len(info.value.details) == services.MAX_DETAILS
    assert "first 100 are listed" in info.value.message


def test_prediction_made_signal_reaches_receivers(client, app, example):
    seen = []

    def receiver(sender, **kwargs):
        seen.append((sender, kwargs))

    with services.prediction_made.connected_to(receiver, app):
        response = client.post("/predict", json={"instances": [example, example]})
    [(sender, kwargs)] = seen
    assert sender is app
    assert kwargs["request_id"] == response.get_json()["request_id"]
    assert kwargs["records"] == [example, example]
    assert kwargs["results"] == response.get_json()["predictions"]
    assert kwargs["batch"] is True
    assert kwargs["model_version"] == response.get_json()["model"]["version"]


def test_generated_request_ids_are_unique_time_ordered_hex():
    from app.logs import new_request_id

    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # millisecond prefix
    assert abs(int(ids[-1][:12], 16) / 1000 - time.time()) < 60
