"""The real server command, ``gunicorn -c gunicorn.conf.py 'app:create_app()'``, over HTTP."""
from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from helpers import Server, call, log_records, metric_samples

pytestmark = pytest.mark.slow

READY_WITHIN = 10.0  # generous for a loaded CI runner; bench_http.py measures the real figure


@pytest.fixture(scope="module")
def server(trained_model_dir, tmp_path_factory):  # noqa: F811
    # A flush interval longer than the module runs: every row is still queued when the
    # server is stopped, so only the graceful exit can have written it.
    server = Server(trained_model_dir, tmp_path_factory.mktemp("gunicorn"),
                    STORE_FLUSH_SECONDS="300")
    server.ready_after = server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def example(server):
    return call(server.url + "/model")[2]["example"]


def test_becomes_ready_within_seconds_and_names_the_model(server):
    assert server.ready_after < READY_WITHIN
    status, _, body = call(server.url + "/ready")
    assert status == 200 and body["status"] == "ready"
    assert call(server.url + "/health_check")[0] == 200


def test_predicts_one_applicant_and_a_batch(server, example):
    status, head, body = call(server.url + "/predict", example, {"X-Request-ID": "gun-1"})
    assert status == 200
    assert body["decision"] in ("approve", "decline")
    assert head["X-Request-ID"] == "gun-1" == body["request_id"]
    status, _, body = call(server.url + "/predict?reasons=false", {"instances": [example] * 50})
    assert status == 200 and len(body["predictions"]) == 50


@pytest.mark.parametrize("body,status", [(b"{not json", 400), (b'{"age_in_years": NaN}', 400),
                                         (b"[]", 400)])
def test_bad_request_is_a_json_4xx(server, body, status):
    got, _, error = call(server.url + "/predict", body)
    assert got == status
    assert set(error) == {"error", "message", "details"}


def test_body_over_the_limit_is_a_413_the_client_can_read(server):
    body = b'{"instances": [' + b'{"a": 1},' * 300_000 + b"{}]}"  # ~3 MB > 2 MiB default
    for _ in range(3):  # the answer must arrive every time, not a broken pipe
        status, _, error = call(server.url + "/predict", body)
        assert status == 413 and error["error"] == "Request Entity Too Large"


def test_unknown_route_and_wrong_method_are_json(server):
    assert call(server.url + "/nope")[2]["error"] == "Not Found"
    status, head, body = call(server.url + "/predict")
    assert status == 405 and body["error"] == "Method Not Allowed" and "POST" in head["Allow"]


def _predict_count(server) -> float:
    samples = [s for s in metric_samples(call(server.url + "/metrics")[2],
                                         "credit_api_requests_total")
               if s.labels == {"endpoint": "/predict", "method": "POST", "status": "200"}]
    return samples[0].value if samples else 0.0


def test_metrics_sum_over_both_workers(server, example):
    before = _predict_count(server)
    sent, pids = 0, set()
    while len(pids) < 2 and sent < 400:
        call(server.url + "/predict", example, {"X-Request-ID": f"metrics-{sent}"})
        sent += 1
        if sent % 10 == 0:
            pids = {r["pid"] for r in log_records(server.log)
                    if str(r.get("request_id", "")).startswith("metrics-")}
    assert len(pids) == 2, "the requests never reached the second worker"
    # One scrape is answered by one worker, yet it counts what both served.
    assert _predict_count(server) == before + sent
    text = call(server.url + "/metrics")[2]
    assert "credit_api_model_ready 1.0" in text
    assert 'credit_api_model_info{name="' in text


def test_stdout_is_json_lines_with_a_request_line_per_request(server):
    call(server.url + "/health_check", headers={"X-Request-ID": "log-check-1"})
    time.sleep(0.2)
    records = log_records(server.log)  # raises if any line is not JSON
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "app.request", "app.model"} <= loggers
    [line] = [r for r in records if r.get("request_id") == "log-check-1"]
    assert {"timestamp", "level", "request_id", "method", "endpoint", "status", "latency_ms",
            "model_version"} <= set(line)


def test_no_control_socket_is_opened(server):
    assert not (server.home / ".gunicorn").exists()


def test_sigterm_stops_gracefully_and_every_queued_prediction_is_stored(server):
    # Runs last in this module: it ends the server.
    metrics_dir = next(server.home.parent.glob("credit-api-metrics-*"))
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=35) == 0
    records = log_records(server.log)
    messages = [r["message"] for r in records]
    assert "Handling signal: term" in messages
    assert any(m.startswith("Shutting down") for m in messages)
    assert not metrics_dir.exists()
    # Every answered prediction of both workers, as their audit lines count them, is in
    # the database (none was written before the stop: the flush interval is 300 s).
    answered: dict[str, int] = {}
    for r in records:
        if r.get("endpoint") == "/predict" and r.get("status") == 200:
            assert r["stored"] == "spooled"
            answered[r["request_id"]] = answered.get(r["request_id"], 0) + r.get("count", 1)
    assert len({r["pid"] for r in records if r.get("endpoint") == "/predict"}) == 2
    with sqlite3.connect(server.database) as conn:
        stored = dict(conn.execute("SELECT request_id, COUNT(*) FROM predictions "
                                   "GROUP BY request_id"))
    assert stored == answered and sum(stored.values()) >= 50
    assert "predictions not stored" not in messages
