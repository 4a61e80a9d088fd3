"""The monitor job's reports in the store (ml.monitoring.reports) on SQLite and a real
PostgreSQL, the /metrics collector that reads them (cache, deadline, a hung database),
and the whole flow on a real gunicorn: job -> store -> GET /monitoring and /metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from helpers import ROOT, Server, call, metric_samples
from ml.monitoring.reports import newest_report, save_report
from ml.monitoring.store import PredictionStore
from test_postgres import fresh_database, postgres  # noqa: F401 - the session's server

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    store = PredictionStore(fresh_database(request, tmp_path, request.param), retry_seconds=0)
    yield store
    store.dispose()


def a_report(name="german_credit", version="v1", rows=150, psi=0.05, **extra):
    return {"model": {"name": name, "version": version},
            "window": {"days": 7, "rows": rows, "from": "2026-11-24T08:00:00+00:00",
                       "to": "2026-12-01T07:59:00+00:00"},
            "drift": {"score": {"psi": psi}, "features": {"age": {"psi": 0.3}}},
            "decisions": {"approve": {"count": 100, "share": 100 / rows}},
            "outcomes": {"labelled": 20, "metrics": None}, **extra}


def test_a_saved_report_is_read_back_whole_with_its_columns(store):
    report = a_report(summary={"max_feature_psi": float("nan")})
    report_id = save_report(store, report, now=T0)
    stored = newest_report(store)
    assert stored["id"] == report_id
    assert stored["created_at"] == T0 and stored["created_at"].tzinfo is not None
    assert (stored["model_name"], stored["model_version"]) == ("german_credit", "v1")
    assert (stored["rows"], stored["labelled"]) == (150, 20)
    assert stored["window_from"] == datetime(2026, 11, 24, 8, tzinfo=timezone.utc)
    assert stored["window_to"] == datetime(2026, 12, 1, 7, 59, tzinfo=timezone.utc)
    # JSON has no NaN: a non-finite figure is stored as null.
    assert stored["report"] == {**report, "summary": {"max_feature_psi": None}}


def test_the_newest_report_wins_per_model_and_none_before_the_first(store):
    assert newest_report(store) is None
    save_report(store, a_report(version="v1"), now=T0)
    later = save_report(store, a_report(version="v2"), now=T0 + timedelta(hours=1))
    save_report(store, a_report(name="other_model"), now=T0 + timedelta(minutes=30))
    same_time = save_report(store, a_report(version="v3"), now=T0 + timedelta(hours=1))
    assert newest_report(store, "german_credit")["id"] == same_time  # ties: the later id
    assert newest_report(store, "other_model")["model_name"] == "other_model"
    assert newest_report(store, "unknown") is None
    assert newest_report(store)["id"] in (later, same_time)


# ----------------------------------------------------------------------- /metrics collector


def scrape(client, name):
    text = client.get("/metrics").get_data(as_text=True)
    return {tuple(sorted(s.labels.items())): s.value for s in metric_samples(text, name)}


def test_the_gauges_are_cached_for_the_ttl_then_read_again(make_app, tmp_path):
    app = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}",
                   MONITORING_CACHE_SECONDS=0.5)
    client, store = app.test_client(), app.extensions["prediction_store"]
    assert scrape(client, "credit_api_score_psi") == {}  # no report yet
    save_report(store, a_report(psi=0.05))
    assert scrape(client, "credit_api_score_psi") == {}  # still the cached "none"
    time.sleep(0.6)
    assert scrape(client, "credit_api_score_psi") == {(): 0.05}
    save_report(store, a_report(psi=0.4))
    assert scrape(client, "credit_api_score_psi") == {(): 0.05}
    time.sleep(0.6)
    assert scrape(client, "credit_api_score_psi") == {(): 0.4}
    assert scrape(client, "credit_api_psi") == {(("feature", "age"),): 0.3}
    assert scrape(client, "credit_api_decision_share") == {
        (("decision", "approve"),): pytest.approx(100 / 150)}
    [(labels, stamp)] = scrape(client, "credit_api_monitoring_report_timestamp_seconds").items()
    assert dict(labels)["model"] == "german_credit" and abs(stamp - time.time()) < 60


@pytest.mark.slow
def test_a_hung_database_never_slows_metrics_past_a_second(
        request, make_app, tmp_path, postgres):  # noqa: F811
    url = fresh_database(request, tmp_path, "postgresql")
    app = make_app(DATABASE_URL=url, MONITORING_CACHE_SECONDS=0.3,
                   MONITORING_METRICS_DEADLINE_SECONDS=0.5, STORE_DEADLINE_SECONDS=1)
    client = app.test_client()
    job = PredictionStore(url, retry_seconds=0)
    save_report(job, a_report(psi=0.2))
    job.dispose()
    assert scrape(client, "credit_api_score_psi") == {(): 0.2}
    stopped = postgres.pids()
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.4)  # past the TTL: the next scrape asks the (hung) store
        took = []
        for _ in range(3):
            started = time.monotonic()
            text = client.get("/metrics").get_data(as_text=True)
            took.append(time.monotonic() - started)
            assert [s.value for s in metric_samples(text, "credit_api_score_psi")] == [0.2]
        [age] = metric_samples(text, "credit_api_monitoring_cache_age_seconds")
        started = time.monotonic()
        monitoring = client.get("/monitoring")
        monitoring_took = time.monotonic() - started
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # a backend that had exited, reaped once resumed
                pass
    assert max(took) < 1.0, took
    assert age.value > 0.3  # says how old the cached gauges are
    assert monitoring.status_code == 503 and monitoring_took < 1.5
    errors = scrape(client, "credit_api_store_errors_total")
    assert errors[(("operation", "metrics"),)] >= 1


# ----------------------------------------------------------------------- the whole flow


@pytest.mark.slow
def test_the_monitor_job_report_is_served_by_gunicorn_on_monitoring_and_metrics(
        trained_model_dir, tmp_path):
    server = Server(trained_model_dir, tmp_path, MONITORING_CACHE_SECONDS="1")
    try:
        server.wait_ready()
        assert call(server.url + "/monitoring")[0] == 404
        example = call(server.url + "/model")[2]["example"]
        many = [{**example, "credit_amount": 1000 + 50 * i} for i in range(250)]
        assert call(server.url + "/predict?reasons=false", {"instances": many})[0] == 200
        time.sleep(1.0)  # > STORE_FLUSH_SECONDS: the spooled rows are in the database
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{server.database}"}
        job = subprocess.run([sys.executable, "-m", "ml", "monitor", "--model",
                              str(trained_model_dir), "--out", str(tmp_path / "job"),
                              "--no-plots", "--days", "1"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr[-2000:]
        printed = json.loads(job.stdout.strip().splitlines()[-1])
        assert printed["rows"] == 250 and printed["report_id"] >= 1
        status, _, body = call(server.url + "/monitoring")
        assert status == 200 and body["id"] == printed["report_id"]
        assert body["window"]["rows"] == 250 and body["drift"]["features"]
        time.sleep(1.1)  # past MONITORING_CACHE_SECONDS of a worker that scraped before
        for _ in range(4):  # whichever worker answers
            text = call(server.url + "/metrics")[2]
            psi = {s.labels["feature"]: s.value for s in metric_samples(text, "credit_api_psi")}
            assert psi == {k: pytest.approx(v["psi"]) for k, v in
                           body["drift"]["features"].items()}
            [rows] = metric_samples(text, "credit_api_monitoring_rows")
            assert rows.value == 250
    finally:
        server.stop()
