"""The prediction store on a real PostgreSQL server (initdb + pg_ctl in a temp dir).

Skipped on a developer machine without the PostgreSQL server binaries; in CI (``CI``
set) their absence is a failure, so the production backend is always exercised there.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import children, free_port
from ml.monitoring import migrate
from ml.monitoring.migrate import upgrade
from ml.monitoring.store import PredictionStore, StoreUnavailable

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


class Server:
    """A throw-away PostgreSQL cluster; run as ``postgres`` when the tests run as root."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.data, self.port = bindir, root / "data", free_port()
        self.log = root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres", "postgres")

    def run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.as_user, str(self.bindir / tool), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{tool}: {result.stdout}{result.stderr}"

    def initdb(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                 "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster and its children (to stop the server with signals)."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        return [master, *children(master)]

    def url(self, database: str = "credit") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres():
    """A running server with database ``credit``; yields the :class:`Server`."""
    bindir = pg_bin()
    if bindir is None:
        message = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run these tests: make system-deps)")
        pytest.skip(message)
    # Not under pytest's basetemp: that is private to the test user (0700), and the
    # server runs as ``postgres`` when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="credit-risk-pg-"))
    server = Server(bindir, root)
    server.initdb()
    server.start()
    try:
        server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                   "credit")
        upgrade(server.url())  # what `python -m ml db upgrade` does in production
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:  # already stopped by a test
            pass
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(request, tmp_path, backend: str) -> str:
    """A new, migrated database for one test: an SQLite file (the store migrates it), or
    a database of its own on the session's server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server = request.getfixturevalue("postgres")
    name = f"t{uuid.uuid4().hex[:12]}"
    server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", name)
    upgrade(server.url(name))
    return server.url(name)


@pytest.fixture()
def app(postgres, make_app):
    """An app whose store is the module's PostgreSQL server."""
    return make_app(DATABASE_URL=postgres.url(), STORE_RETRY_SECONDS=1)


def test_predictions_feedback_and_monitoring_work_on_postgresql(app, example):
    client = app.test_client()
    response = client.post("/predict", json={"instances": [example, example]},
                           headers={"X-Request-ID": "pg-batch"})
    assert response.status_code == 200
    assert client.get("/ready").get_json()["store"] == "ok"
    pid = response.get_json()["prediction_id"]
    answer = client.post("/feedback", json={"prediction_id": pid, "index": 1,
                                            "outcome": "bad"})
    assert answer.status_code == 200 and answer.get_json()["status"] == "created"
    assert client.post("/feedback", json={"prediction_id": pid, "index": 1,
                                          "outcome": "good"}).status_code == 409
    rows = [r for r in app.extensions["prediction_store"].window(days=1)
            if r["request_id"] == "pg-batch"]
    assert [(r["item"], r["outcome"]) for r in rows] == [(0, None), (1, "bad")]
    assert rows[0]["features"] == example
    assert rows[0]["created_at"].tzinfo is not None
    assert client.get("/monitoring?last=2").get_json()["window"]["rows"] == 2


def test_rows_survive_an_app_restart_on_postgresql(postgres, make_app, example):
    first = make_app(DATABASE_URL=postgres.url(), TESTING=False)
    first.test_client().post("/predict", json=example, headers={"X-Request-ID": "pg-kept"})
    first.extensions["prediction_store"].dispose()
    second = PredictionStore(postgres.url())
    assert "pg-kept" in {r["request_id"] for r in second.window()}
    second.dispose()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_stopped_server_keeps_predictions_in_the_spool_and_stores_them_after(
        postgres, make_app, example, capsys, mode):
    import json
    import time

    app = make_app(DATABASE_URL=postgres.url(), STORE_RETRY_SECONDS=1, STORE_WRITE=mode)
    client, store = app.test_client(), app.extensions["prediction_store"]

    def predict(request_id):
        response = client.post("/predict", json=example, headers={"X-Request-ID": request_id})
        assert response.status_code == 200

    predict(f"pg-before-{mode}")
    assert store.flush(10)
    postgres.stop()
    try:
        capsys.readouterr()
        predict(f"pg-down-{mode}-0")
        predict(f"pg-down-{mode}-1")
        assert not store.flush(2)  # the rows wait in the spool
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        stored = [r["stored"] for r in records if r.get("endpoint") == "/predict"]
        assert stored == ["spooled", "spooled"]
        body = client.get("/ready")
        assert body.status_code == 200 and body.get_json()["store"] == "degraded"
    finally:
        postgres.start()
    predict(f"pg-back-{mode}")
    assert store.flush(15)
    time.sleep(1.1)  # STORE_RETRY_SECONDS: reads may have met the breaker
    assert client.get("/ready").get_json()["store"] == "ok"
    ids = [r["request_id"] for r in store.window()]
    assert [i for i in ids if i.endswith(f"-{mode}") or f"-{mode}-" in i] == [
        f"pg-before-{mode}", f"pg-down-{mode}-0", f"pg-down-{mode}-1", f"pg-back-{mode}"]
    store.dispose()


def test_sync_save_and_a_queued_group_give_the_same_rows_on_postgresql(postgres, example):
    from datetime import datetime, timezone

    store = PredictionStore(postgres.url(), flush_seconds=60)
    now = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    result = {"probability_of_default": 0.25, "decision": "decline"}
    assert store.save("pg-sync", [example, example], [result] * 2, "m", "v", True, now=now) == 2
    assert store.enqueue("pg-async", [example, example], [result] * 2, "m", "v", True, now=now)
    assert store.flush(10)
    rows = [r for r in store.window(days=1, now=now)
            if r["request_id"] in ("pg-sync", "pg-async")]
    strip = [{k: v for k, v in r.items() if k not in ("id", "request_id", "prediction_id")}
             for r in rows]
    assert len(rows) == 4 and strip[:2] == strip[2:]
    assert strip[1] == {"item": 1, "batch": True, "created_at": now, "model_name": "m",
                        "model_version": "v", "features": example,
                        "probability_of_default": 0.25, "decision": "decline",
                        "client": None, "outcome": None, "labelled_at": None,
                        "labelled_by": None}
    store.dispose()


def test_postgresql_is_migrated_by_the_command_never_by_the_store(postgres, example):
    import subprocess
    import sys

    postgres.run("createdb", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres",
                 "fresh")
    store = PredictionStore(postgres.url("fresh"))
    with pytest.raises(StoreUnavailable):
        store.window()  # no tables: a worker does not create them
    done = subprocess.run([sys.executable, "-m", "ml", "db", "upgrade", "--url",
                           postgres.url("fresh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == migrate.HEAD == "0002"
    store = PredictionStore(postgres.url("fresh"))
    assert store.save("m-1", [example], [{"probability_of_default": 0.1,
                                          "decision": "approve"}], "m", "v", False) == 1
    assert [r["request_id"] for r in store.window()] == ["m-1"]
    store.dispose()
