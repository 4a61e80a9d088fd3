"""The fast lane (app/fastlane.py) answers exactly as the Flask view does.

Every request of the table goes to two apps on the same model, one with the lane and one
without, and must get the same status, headers, body, log line, metrics and stored rows;
the lane must take the valid predictions and hand everything else to Flask.
"""
from __future__ import annotations

import io
import json
import re

import pytest
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app import create_app, services
from app.fastlane import PredictLane
from app.store import EXTENSION as STORE

REQUEST_ID = "parity-0001"


def _app(model_dir, tmp_path_factory, lane):
    db = tmp_path_factory.mktemp("lane" if lane else "flask") / "predictions.db"
    return create_app({"MODEL_DIR": str(model_dir), "TESTING": True, "FAST_LANE": lane,
                       "DATABASE_URL": f"sqlite:///{db}", "STORE_WRITE": "sync",
                       "MAX_BATCH": 3, "MAX_CONTENT_LENGTH": 64 * 1024})


@pytest.fixture(scope="module")
def app(trained_model_dir, tmp_path_factory):  # noqa: F811 - the lane app is the module's app
    return _app(trained_model_dir, tmp_path_factory, lane=True)


@pytest.fixture(scope="module")
def flask_app(trained_model_dir, tmp_path_factory):
    return _app(trained_model_dir, tmp_path_factory, lane=False)


@pytest.fixture()
def taken(app, monkeypatch):
    """Counts the requests the lane hands on to Flask."""
    lane = app.wsgi_app
    to_flask = lane.fallback
    calls = []

    def fallback(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return to_flask(environ, start_response)

    monkeypatch.setattr(lane, "fallback", fallback)
    return calls


def _example(app):
    return dict(app.extensions["credit_model"].predictor.card["example"])


def _json_body(value) -> bytes:
    return json.dumps(value).encode()


JSON = "application/json"


def _post(body, path="/predict", content_type=JSON, lane=False):
    """A request of the table: (method, path, content type, body, whether the lane
    answers it itself)."""
    return "POST", path, content_type, body, lane


# name -> function of the example applicant giving the request
CASES = {
    "single": lambda ex: _post(_json_body(ex), lane=True),
    "no_reasons": lambda ex: _post(_json_body(ex), "/predict?reasons=false", lane=True),
    "reasons_spelled_yes": lambda ex: _post(_json_body(ex), "/predict?reasons=YES", lane=True),
    "charset": lambda ex: _post(_json_body(ex), content_type=JSON + "; charset=utf-8",
                                lane=True),
    "batch": lambda ex: _post(_json_body({"instances": [ex, ex]}), lane=True),
    "batch_too_big": lambda ex: _post(_json_body({"instances": [ex] * 4})),
    "empty_batch": lambda ex: _post(_json_body({"instances": []})),
    "unknown_field": lambda ex: _post(_json_body({**ex, "favourite_colour": "red"})),
    "missing_field": lambda ex: _post(_json_body({k: v for k, v in list(ex.items())[1:]})),
    "nan": lambda ex: _post(json.dumps({k: float("nan") for k in ex}).encode()),
    "not_json": lambda ex: _post(b"{not json"),
    "array": lambda ex: _post(b"[1, 2]"),
    "empty_body": lambda ex: _post(b""),
    "text_plain": lambda ex: _post(_json_body(ex), content_type="text/plain"),
    "too_large": lambda ex: _post(b'{"x": "' + b"a" * 70_000 + b'"}'),
    "reasons_unclear": lambda ex: _post(_json_body(ex), "/predict?reasons=maybe"),
    "reasons_empty": lambda ex: _post(_json_body(ex), "/predict?reasons="),
    "other_query": lambda ex: _post(_json_body(ex), "/predict?reasons=false&debug=1"),
    "encoded_query": lambda ex: _post(_json_body(ex), "/predict?reasons=%66alse"),
    "get": lambda ex: ("GET", "/predict", None, None, False),
    "trailing_slash": lambda ex: _post(_json_body(ex), "/predict/"),
}


def _environ(method, path, content_type, body, request_id=REQUEST_ID):
    builder = EnvironBuilder(path=path, method=method, data=body, content_type=content_type,
                             headers={"X-Request-ID": request_id})
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _call(app, environ):
    iterable, status, headers = run_wsgi_app(app, environ)
    body = b"".join(iterable)
    if hasattr(iterable, "close"):
        iterable.close()
    return int(status.split()[0]), dict(headers), body


def _metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _request_counts(method):
    return [_metric("credit_api_requests_total", endpoint=e, method=method, status=s)
            for e in ("/predict", "<unmatched>") for s in ("200", "400")]


def _observed(app, environ, capsys):
    """Everything a request leaves behind: answer, log line, metric deltas, stored rows."""
    capsys.readouterr()
    before = _request_counts(environ["REQUEST_METHOD"])
    decisions = [_metric("credit_api_decisions_total", decision=d)
                 for d in ("approve", "decline")]
    pd_count = _metric("credit_api_probability_of_default_count")
    status, headers, body = _call(app, environ)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    [line] = [r for r in lines if r.get("message") == "request"]
    after = _request_counts(environ["REQUEST_METHOD"])
    timing = headers.pop("Server-Timing")
    assert re.fullmatch(r"app;dur=\d+\.\d{3}", timing)
    for key in ("timestamp", "latency_ms"):
        line.pop(key)
    rows = [{k: v for k, v in row.items() if k not in ("id", "created_at")}
            for row in app.extensions[STORE].window()] if status == 200 else []
    return {"status": status, "headers": headers, "body": json.loads(body), "log": line,
            "requests": [a - b for a, b in zip(after, before)],
            "decisions": [_metric("credit_api_decisions_total", decision=d) - n
                          for d, n in zip(("approve", "decline"), decisions)],
            "pds": _metric("credit_api_probability_of_default_count") - pd_count,
            "rows": rows[-2:]}


def test_the_lane_sits_in_front_of_flask_only_when_enabled(app, flask_app):
    assert isinstance(app.wsgi_app, PredictLane)
    assert not isinstance(flask_app.wsgi_app, PredictLane)


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_log_metrics_and_rows_with_and_without_the_lane(case, app, flask_app,
                                                                    taken, capsys):
    method, path, content_type, body, lane_answers = CASES[case](_example(app))
    with_lane = _observed(app, _environ(method, path, content_type, body), capsys)
    without = _observed(flask_app, _environ(method, path, content_type, body), capsys)
    assert with_lane == without
    assert (taken == []) is lane_answers
    if lane_answers:
        assert with_lane["status"] == 200 and with_lane["headers"]["Cache-Control"] == "no-store"
        assert with_lane["rows"] and with_lane["log"]["stored"] is True


def test_a_body_shorter_than_declared_goes_to_flask(app, flask_app, taken):
    body = _json_body(_example(app))
    answers = []
    for target in (app, flask_app):
        environ = _environ("POST", "/predict", JSON, body)
        environ["wsgi.input"] = io.BytesIO(body[:-5])
        answers.append(_call(target, environ)[::2])
    assert answers[0] == answers[1] and answers[0][0] == 400
    assert taken == ["/predict"]


class _Gone(io.BytesIO):
    def read(self, *args):
        raise OSError("the client went away")


def test_a_client_gone_mid_body_goes_to_flask(app, taken):
    environ = _environ("POST", "/predict", JSON, _json_body(_example(app)))
    environ["wsgi.input"] = _Gone()
    assert _call(app, environ)[0] == 400
    assert taken == ["/predict"]


@pytest.mark.parametrize("where", ["score_body", "response_body"])
def test_a_bug_answers_the_same_json_500(where, app, flask_app, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(services, where, broken)
    example = _json_body(_example(app))
    answers = []
    for target in (app, flask_app):
        capsys.readouterr()
        status, headers, body = _call(target, _environ("POST", "/predict", JSON,
                                                       example))
        out = capsys.readouterr().out
        [line] = [json.loads(x) for x in out.splitlines() if '"message":"request"' in x]
        assert '"message":"unhandled error"' in out and "RuntimeError" in out
        answers.append((status, headers["Content-Type"], json.loads(body), line["status"],
                        line["level"]))
    assert answers[0] == answers[1]
    assert answers[0][0] == 500 and answers[0][2]["error"] == "Internal Server Error"


def test_no_body_limit_means_no_limit(trained_model_dir, tmp_path):
    app = create_app({"MODEL_DIR": str(trained_model_dir), "TESTING": True,
                      "MAX_CONTENT_LENGTH": None,
                      "DATABASE_URL": f"sqlite:///{tmp_path}/predictions.db"})
    status, _, body = _call(app, _environ("POST", "/predict", JSON,
                                          _json_body(_example(app))))
    assert status == 200 and "probability_of_default" in json.loads(body)
