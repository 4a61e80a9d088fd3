"""The store under a real 2-worker gunicorn: read-your-writes across workers, and no
answered prediction lost when workers are killed (SQLite and a real PostgreSQL)."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from helpers import Server, call
from ml.monitoring.migrate import upgrade
from test_postgres import postgres  # noqa: F401 - the session's PostgreSQL server

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh database URL: an SQLite file, or a new database on the test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server = request.getfixturevalue("postgres")
    name = f"d{uuid.uuid4().hex[:12]}"
    server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", name)
    upgrade(server.url(name))
    return server.url(name)


@pytest.fixture()
def gunicorn(trained_model_dir, tmp_path, database, example):
    server = Server(trained_model_dir, tmp_path, DATABASE_URL=database)
    server.wait_ready()
    yield server
    server.stop()


def stored_ids(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.text("SELECT prediction_id FROM predictions"))}
    finally:
        engine.dispose()


def workers(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def test_feedback_right_after_its_prediction_is_accepted_by_any_worker(gunicorn, example):
    def one(i: int) -> int:
        status, _, body = call(gunicorn.url + "/predict", example,
                               {"X-Request-ID": f"race-{i}"})
        assert status == 200
        return call(gunicorn.url + "/feedback", {"prediction_id": body["prediction_id"],
                                                 "outcome": "good"})[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}


def test_killed_workers_lose_no_answered_prediction(gunicorn, database, example):
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, _, body = call(gunicorn.url + "/predict", example, timeout=5)
            except OSError:  # the connection of a killed worker
                continue
            if status == 200:
                answered.append(body["prediction_id"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(2):
        time.sleep(1.5)
        os.kill(workers(gunicorn.process.pid)[0], signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()
    gunicorn.process.send_signal(signal.SIGTERM)
    assert gunicorn.process.wait(60) == 0
    assert len(answered) > 100
    missing = set(answered) - stored_ids(database)
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions lost"


class Load:
    """Client threads that POST /predict until stopped, recording every answer."""

    def __init__(self, url: str, example: dict, threads: int = 4) -> None:
        self.url, self.example = url, example
        self.answered: list[str] = []
        self.failed: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            status, _, body = call(self.url + "/predict", self.example, timeout=10)
            if status == 200:
                self.answered.append(body["prediction_id"])
            else:
                self.failed.append(status)

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_a_database_outage_under_load_loses_nothing_and_ready_says_degraded(
        postgres, trained_model_dir, tmp_path, example):  # noqa: F811
    url = postgres.url()
    server = Server(trained_model_dir, tmp_path, DATABASE_URL=url, STORE_RETRY_SECONDS="1")
    try:
        server.wait_ready()
        load = Load(server.url, example)
        time.sleep(1)
        postgres.stop()
        try:
            states = set()
            for _ in range(20):  # ~20 s down
                time.sleep(1)
                status, _, body = call(server.url + "/ready", timeout=5)
                assert status == 200
                states.add(body["store"])
        finally:
            postgres.start()
        time.sleep(2)
        load.end()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    assert states == {"degraded"}
    assert load.failed == [] and len(load.answered) > 100
    missing = set(load.answered) - stored_ids(url)
    assert not missing, f"{len(missing)} of {len(load.answered)} answered predictions lost"


def test_rows_spooled_before_a_restart_are_written_after_it(
        postgres, trained_model_dir, tmp_path, example):  # noqa: F811
    url, spool = postgres.url(), str(tmp_path / "spool")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Server(trained_model_dir, tmp_path / "a", DATABASE_URL=url, STORE_SPOOL_DIR=spool)
    try:
        first.wait_ready()
        postgres.stop()
        try:
            answered = [call(first.url + "/predict", example)[2]["prediction_id"]
                        for _ in range(20)]
            for pid in [*workers(first.process.pid), first.process.pid]:
                os.kill(pid, signal.SIGKILL)  # the whole pod dies with the spool on disk
            first.process.wait(10)
        finally:
            postgres.start()
    finally:
        first.stop()
    assert os.listdir(spool)
    assert not set(answered) & stored_ids(url)
    second = Server(trained_model_dir, tmp_path / "b", DATABASE_URL=url, STORE_SPOOL_DIR=spool)
    try:
        second.wait_ready()
        deadline = time.monotonic() + 20
        while set(answered) - stored_ids(url) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        second.stop()
    assert not set(answered) - stored_ids(url)
