"""The store under a real 2-worker gunicorn: read-your-writes across workers, and no
answered prediction lost when workers are killed (SQLite and a real PostgreSQL)."""
from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from helpers import Server, call, children
from test_postgres import fresh_database, postgres  # noqa: F401 - the session's server

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A fresh database URL: an SQLite file, or a new database on the test server."""
    return fresh_database(request, tmp_path, request.param)


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
            except (OSError, http.client.HTTPException):  # a killed worker's connection
                continue
            if status == 200:
                answered.append(body["prediction_id"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for _ in range(2):
        time.sleep(1.5)
        os.kill(children(gunicorn.process.pid)[0], signal.SIGKILL)
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
        self.failed: list[object] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, _, body = call(self.url + "/predict", self.example, timeout=10)
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))
                continue
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
            for pid in [*children(first.process.pid), first.process.pid]:
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


def test_a_hung_database_costs_a_request_its_deadline_and_predictions_go_on(
        postgres, trained_model_dir, tmp_path, example):  # noqa: F811
    url = postgres.url()
    server = Server(trained_model_dir, tmp_path, DATABASE_URL=url,
                    STORE_DEADLINE_SECONDS="2", STORE_RETRY_SECONDS="1")
    try:
        server.wait_ready()
        pid = call(server.url + "/predict", example)[2]["prediction_id"]
        load = Load(server.url, example)
        stopped = postgres.pids()
        for process in stopped:
            os.kill(process, signal.SIGSTOP)
        try:
            time.sleep(0.5)
            started = time.monotonic()
            status, _, _ = call(server.url + "/feedback", {"prediction_id": pid,
                                                           "outcome": "good"}, timeout=20)
            took = time.monotonic() - started
            ready_started = time.monotonic()
            ready = call(server.url + "/ready", timeout=20)
            ready_took = time.monotonic() - ready_started
            before = len(load.answered)
            time.sleep(3)
            during = len(load.answered) - before
        finally:
            for process in stopped:
                os.kill(process, signal.SIGCONT)
        load.end()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    assert status == 503 and took < 3.5  # the 2 s deadline, not the hang
    assert ready[0] == 200 and ready[2]["store"] == "degraded" and ready_took < 2
    assert during > 30 and load.failed == []  # other clients answered meanwhile
    missing = set(load.answered) - stored_ids(url)
    assert not missing, f"{len(missing)} answered predictions lost"


def test_slow_clients_do_not_hold_the_workers(trained_model_dir, tmp_path, example):
    import json
    import socket

    server = Server(trained_model_dir, tmp_path)
    slow = []
    try:
        server.wait_ready()
        body = json.dumps(example).encode()
        for _ in range(2):  # as many as there are workers
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            slow.append(sock)
        times = []
        for i in range(8):
            for sock in slow:
                sock.sendall(body[i:i + 1])  # a byte a second each
            started = time.monotonic()
            assert call(server.url + "/predict", example, timeout=5)[0] == 200
            times.append(time.monotonic() - started)
            time.sleep(max(0.0, 1 - times[-1]))
    finally:
        for sock in slow:
            sock.close()
        server.stop()
    assert max(times) < 1.0, times
