"""The prediction store on a real SQLite file: every prediction saved, nothing lost on
restart, and an outage that neither stops predictions nor loses their rows (they wait in
the spool); the spool's writer: group commits, failures retried and logged, a forked
worker writing its own rows; the migrations."""
from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from helpers import json_lines, request_lines
from ml.monitoring import migrate
from ml.monitoring.store import PredictionStore

RESULT = {"probability_of_default": 0.2, "decision": "approve"}

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture()
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'predictions.db'}"


def committed_ids(url):
    """Request ids of the rows committed to an SQLite file, read around the store."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT request_id FROM predictions ORDER BY id")]
        except sqlite3.OperationalError:  # no table yet
            return []


def counter(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_prediction_is_stored_with_id_time_model_features_pd_and_decision(
        make_app, db_url, example):
    app = make_app(DATABASE_URL=db_url)
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


def test_ready_reports_the_store_ok(make_app, db_url):
    body = make_app(DATABASE_URL=db_url).test_client().get("/ready").get_json()
    assert body["status"] == "ready" and body["store"] == "ok"


def test_rows_and_feedback_survive_a_restart_on_the_same_database(make_app, db_url,
                                                                  example):
    first = make_app(DATABASE_URL=db_url).test_client()
    made = first.post("/predict", json=example, headers={"X-Request-ID": "kept"})
    assert made.status_code == 200
    kept = made.get_json()["prediction_id"]
    assert first.post("/feedback", json={"prediction_id": kept, "outcome": "bad"}
                      ).status_code == 200

    again = make_app(DATABASE_URL=db_url)
    rows = again.extensions["prediction_store"].window()
    assert [(r["request_id"], r["outcome"]) for r in rows] == [("kept", "bad")]
    answer = again.test_client().post("/feedback", json={"prediction_id": kept, "outcome": "bad"})
    assert answer.get_json()["status"] == "unchanged"


@pytest.mark.parametrize("url", [
    "sqlite:////nonexistent-dir/for/sure/predictions.db",   # cannot be created
    "postgresql+psycopg://nobody:x@127.0.0.1:9/none",        # nothing listens on port 9
], ids=["unwritable-sqlite", "unreachable-postgres"])
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_store_outage_keeps_predictions_in_the_spool_and_the_audit_line(
        make_app, url, mode, example, capsys):
    app = make_app(DATABASE_URL=url, STORE_WRITE=mode)
    client = app.test_client()
    store = app.extensions["prediction_store"]
    capsys.readouterr()
    for i in range(3):
        response = client.post("/predict", json=example, headers={"X-Request-ID": f"out-{i}"})
        assert response.status_code == 200
        assert 0 <= response.get_json()["probability_of_default"] <= 1
    assert not store.flush(1)  # nothing can be written: the rows wait in the spool
    assert store.backlog() == 3
    out = capsys.readouterr().out
    lines = request_lines(out, "/predict")
    assert len(lines) == 3 and all(line["decision"] for line in lines)
    assert [line["stored"] for line in lines] == ["spooled"] * 3
    [warning] = [r for r in json_lines(out) if r["message"].startswith(
        "prediction store unavailable")]
    assert warning["level"] == "WARNING" and "nobody" not in json.dumps(warning)
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["store"] == "degraded"
    assert client.get("/health_check").status_code == 200
    for path, kwargs in (("/monitoring", {}),
                         ("/feedback", {"json": {"prediction_id": "x", "outcome": "good"}})):
        answer = getattr(client, "get" if path == "/monitoring" else "post")(path, **kwargs)
        assert answer.status_code == 503
        assert set(answer.get_json()) == {"error", "message", "details"}
        assert "nobody" not in answer.get_data(as_text=True)
    errors = client.get("/metrics").get_data(as_text=True)
    assert 'credit_api_store_errors_total{operation="write"}' in errors  # the alert's input
    assert 'credit_api_store_errors_total{operation="feedback"}' in errors


def test_rows_spooled_during_an_outage_are_stored_in_order_when_it_ends(
        make_app, tmp_path, example):
    directory = tmp_path / "later"
    url = f"sqlite:///{directory / 'p.db'}"
    app = make_app(DATABASE_URL=url, STORE_RETRY_SECONDS=1)
    client = app.test_client()
    store = app.extensions["prediction_store"]
    for i in range(4):
        assert client.post("/predict", json=example, headers={"X-Request-ID": f"o-{i}"}
                           ).status_code == 200
    assert not store.flush(0.5)
    directory.mkdir()  # the database is back
    assert store.flush(10)
    assert committed_ids(url) == [f"o-{i}" for i in range(4)]
    assert client.get("/ready").get_json()["store"] == "ok"


def test_store_comes_back_after_the_retry_pause(tmp_path, example):
    directory = tmp_path / "later"
    store = PredictionStore(f"sqlite:///{directory / 'p.db'}", retry_seconds=0)
    result = {"probability_of_default": 0.2, "decision": "approve"}
    assert store.status() == "degraded"
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


def test_a_reused_request_id_keeps_both_predictions_each_with_its_own_prediction_id(
        make_app, db_url, example):
    app = make_app(DATABASE_URL=db_url)
    client = app.test_client()
    ids = []
    for amount in (1000, 2000):
        response = client.post("/predict", json={**example, "credit_amount": amount},
                               headers={"X-Request-ID": "reused"})
        assert response.status_code == 200
        ids.append(response.get_json()["prediction_id"])
    assert len(set(ids)) == 2
    assert client.post("/feedback", json={"prediction_id": ids[1], "outcome": "good"}
                       ).status_code == 200
    rows = app.extensions["prediction_store"].window()
    assert [(r["features"]["credit_amount"], r["outcome"]) for r in rows] == [
        (1000, None), (2000, "good")]
    assert client.get("/ready").get_json()["store"] == "ok"


# --------------------------------------------------------------------------- spool


def test_a_queued_prediction_is_answered_before_it_is_written_and_a_read_flushes_it(
        make_app, db_url, example, capsys):
    app = make_app(DATABASE_URL=db_url, STORE_FLUSH_SECONDS=60)
    client = app.test_client()
    capsys.readouterr()
    answer = client.post("/predict", json=example, headers={"X-Request-ID": "q-1"})
    assert answer.status_code == 200
    assert request_lines(capsys.readouterr().out, "/predict")[0]["stored"] == "spooled"
    assert committed_ids(db_url) == []  # answered; the writer waits up to 60 s
    # Feedback right after the prediction, in the same process, finds it.
    assert client.post("/feedback", json={"prediction_id": answer.get_json()["prediction_id"],
                                          "outcome": "bad"}).status_code == 200
    assert committed_ids(db_url) == ["q-1"]


def test_sync_mode_commits_the_row_before_the_answer(make_app, db_url, example,
                                                     capsys):
    app = make_app(DATABASE_URL=db_url, STORE_WRITE="sync", STORE_FLUSH_SECONDS=60)
    client = app.test_client()
    capsys.readouterr()
    assert client.post("/predict", json={"instances": [example, example]},
                       headers={"X-Request-ID": "s-1"}).status_code == 200
    assert committed_ids(db_url) == ["s-1", "s-1"]  # no flush, no reader
    assert request_lines(capsys.readouterr().out, "/predict")[0]["stored"] is True


def test_enqueue_then_flush_writes_every_row(tmp_path, example):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = PredictionStore(url, flush_seconds=60)
    for i, size in enumerate((1, 3, 2)):
        records = [{**example, "credit_amount": 1000 + n} for n in range(size)]
        assert store.enqueue(f"r{i}", records, [RESULT] * size, "m", "v", size > 1)
    assert committed_ids(url) == []
    assert store.flush(5)
    assert committed_ids(url) == ["r0", "r1", "r1", "r1", "r2", "r2"]
    rows = store.window()
    assert [(r["item"], r["batch"], r["features"]["credit_amount"]) for r in rows[1:4]] == [
        (0, True, 1000), (1, True, 1001), (2, True, 1002)]
    assert rows[0]["features"] == {**example, "credit_amount": 1000}
    assert rows[0]["created_at"] is not None and rows[0]["probability_of_default"] == 0.2
    assert store.flush(0)  # nothing pending: at once


@pytest.mark.skipif(not hasattr(os, "getpriority") or not os.path.isdir("/proc/self/task"),
                    reason="per-thread nice values are a Linux feature")
def test_the_writer_thread_runs_at_a_lower_priority_than_the_requests(tmp_path, example):
    """Its group commits yield the CPU to the request threads (the API's tail latency);
    the thread that enqueues keeps its own priority."""
    import threading

    from ml.monitoring.spool import WRITER_NICE
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}", flush_seconds=0)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert store.enqueue("r0", [example], [RESULT], "m", "v", False)
    assert store.flush(5)
    writer, = [t for t in threading.enumerate() if t.name == "prediction-store-writer"
               and t.is_alive() and store.drainer().thread is t]
    assert os.getpriority(os.PRIO_PROCESS, writer.native_id) == max(mine, WRITER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_many_requests_are_written_in_a_few_transactions(tmp_path, example):
    def count(store, n, save):
        commits = []
        sa.event.listen(store.engine(), "commit", lambda conn: commits.append(1))
        for i in range(n):
            save(f"g{i}", [example], [RESULT], "m", "v", False)
        assert store.flush(10)
        return len(commits)

    queued = PredictionStore(f"sqlite:///{tmp_path / 'a.db'}", flush_seconds=0.2)
    synced = PredictionStore(f"sqlite:///{tmp_path / 's.db'}")
    assert count(synced, 200, synced.save) == 200
    assert count(queued, 200, queued.enqueue) <= 3
    assert len(queued.window()) == len(synced.window()) == 200


def test_a_failed_group_write_keeps_the_rows_and_logs_no_feature_values(
        make_app, db_url, example, capsys):
    app = make_app(DATABASE_URL=db_url, STORE_FLUSH_SECONDS=60)
    client = app.test_client()
    store = app.extensions["prediction_store"]
    assert client.get("/ready").get_json()["store"] == "ok"  # engine and table made
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'predictions'"
                              ).fetchone()[0]
        conn.execute("ALTER TABLE predictions RENAME TO gone")  # every insert now fails
    capsys.readouterr()
    for request_id, body in (("kept-1", example), ("kept-2", {"instances": [example] * 2})):
        assert client.post("/predict", json=body, headers={"X-Request-ID": request_id}
                           ).status_code == 200
    assert not store.flush(1)
    out = capsys.readouterr().out
    [warning] = [r for r in json_lines(out) if r["message"].startswith(
        "prediction store unavailable")]
    assert warning["level"] == "WARNING" and "no such table" in warning["reason"]
    assert not any(name in json.dumps(warning) for name in example)  # no feature values
    assert [line["stored"] for line in request_lines(out, "/predict")] == ["spooled"] * 2
    assert client.get("/ready").get_json()["store"] == "degraded"
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        conn.execute(schema)
    assert store.flush(10)
    assert committed_ids(db_url) == ["kept-1", "kept-2", "kept-2"]


def test_a_line_replayed_from_the_spool_is_stored_once(tmp_path, example):
    from ml.monitoring.store import line_of
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    line = line_of("pid-1", "r", True, datetime.now(timezone.utc), "m", "v", None,
                   [example] * 2, [RESULT] * 2)
    store._write_lines([line])
    store._write_lines([line, line])  # a crash between insert and deletion of the spool
    assert [(r["prediction_id"], r["item"]) for r in store.window()] == [
        ("pid-1", 0), ("pid-1", 1)]


def test_a_forked_child_writes_its_own_rows_and_not_its_parents(tmp_path, example):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = PredictionStore(url, flush_seconds=60)
    store.enqueue("parent-1", [example], [RESULT], "m", "v", False)
    assert store.flush(5)  # the parent's writer thread exists and has written
    store.enqueue("parent-2", [example], [RESULT], "m", "v", False)  # pending at the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = False
        try:
            ok = (store.enqueue("child", [example], [RESULT], "m", "v", False)
                  and store.flush(5))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert committed_ids(url) == ["parent-1", "child"]  # parent-2 is the parent's to write
    assert store.flush(5)
    assert committed_ids(url) == ["parent-1", "child", "parent-2"]


def test_an_in_memory_sqlite_store_writes_synchronously():
    store = PredictionStore("sqlite://")
    assert store.write == "sync"
    with pytest.raises(ValueError):
        PredictionStore("sqlite://", write="later")


# --------------------------------------------------------------------------- migrations


def test_the_upgrade_command_builds_exactly_the_schema_the_code_uses(tmp_path):
    import subprocess
    import sys

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ml.monitoring.schema import metadata
    url = f"sqlite:///{tmp_path / 'm.db'}"
    done = subprocess.run([sys.executable, "-m", "ml", "db", "upgrade", "--url", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == migrate.HEAD == "0002"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_a_store_written_before_migrations_is_carried_over(tmp_path, example):
    path = tmp_path / "old.db"
    features = json.dumps(example)
    with sqlite3.connect(path) as conn:  # the access-control release's schema
        conn.executescript("""
            CREATE TABLE predictions (id INTEGER PRIMARY KEY, request_id VARCHAR(128) NOT NULL,
              item INTEGER NOT NULL, batch BOOLEAN NOT NULL, created_at DATETIME NOT NULL,
              model_name VARCHAR(128) NOT NULL, model_version VARCHAR(64) NOT NULL,
              features TEXT NOT NULL, probability_of_default FLOAT NOT NULL,
              decision VARCHAR(16) NOT NULL, outcome VARCHAR(64), labelled_at DATETIME,
              prediction_id VARCHAR(64), client VARCHAR(255), labelled_by VARCHAR(255));
            CREATE INDEX ix_predictions_created_at ON predictions (created_at);
            CREATE TABLE outcome_corrections (id INTEGER PRIMARY KEY,
              prediction_row INTEGER NOT NULL, previous_outcome VARCHAR(64) NOT NULL,
              outcome VARCHAR(64) NOT NULL, corrected_by VARCHAR(255) NOT NULL,
              reason VARCHAR(500) NOT NULL, corrected_at DATETIME NOT NULL);""")
        rows = [(1, "old", 0, None, None, None), (2, "old", 0, None, "bad", None),
                (3, "r", 0, "p-new", "good", "key:a")]
        for id_, rid, item, pid, outcome, client in rows:
            conn.execute("INSERT INTO predictions VALUES (?, ?, ?, 0, "
                         "'2026-01-01 00:00:00.000000', 'm', 'v', ?, 0.2, 'approve', ?, "
                         "NULL, ?, ?, NULL)", (id_, rid, item, features, outcome, pid, client))
        conn.execute("INSERT INTO outcome_corrections VALUES (1, 3, 'bad', 'good', 'key:x', "
                     "'ledger', '2026-01-02 00:00:00.000000')")
    store = PredictionStore(f"sqlite:///{path}")
    stored = store.window()
    assert [(r["prediction_id"], r["outcome"]) for r in stored] == [("old", "bad"),
                                                                    ("p-new", "good")]
    assert stored[0]["features"] == example
    with store.engine().connect() as conn:
        assert conn.execute(sa.text("SELECT prediction_id, reason FROM outcome_corrections")
                            ).all() == [("p-new", "ledger")]
    assert store.label("old", 0, "bad")[0] == "unchanged"
