"""A graceful stop of the real server (SIGTERM to the gunicorn master) answers what clients
have already sent, and stores every answered prediction (app/worker.py)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import CLIENT_HEADERS, Server, call, children, request_lines

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

QUEUED = 32  # four times the threads of 2 workers x 4


def post(port: int, body: bytes) -> http.client.HTTPConnection:
    """A connection with one ``POST /predict`` sent and its answer not read yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/predict", body=body,
                 headers={**CLIENT_HEADERS, "Content-Type": "application/json"})
    return conn


def stored_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("SELECT prediction_id FROM predictions")}


def both_workers_serving(server: Server, timeout: float = 20) -> None:
    """Wait until each of the 2 workers has answered a request (is in its accept loop)."""
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda _: call(server.url + "/health_check"), range(16)))
            lines = request_lines(server.log.read_text(), "/health_check")
            if len({line["pid"] for line in lines}) == 2:
                return
    raise AssertionError("the second worker never answered")


@pytest.fixture()
def server(trained_model_dir, tmp_path):
    server = Server(trained_model_dir, tmp_path)
    server.wait_ready()
    both_workers_serving(server)
    yield server
    server.stop()


def test_connections_queued_at_a_graceful_stop_are_answered_and_stored(server, example):
    # Workers held still: the kernel completes every connection and queues it in the
    # listen backlog, where no worker has taken it yet when the stop begins.
    held = children(server.process.pid)
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        sent = [post(server.port, json.dumps(example).encode()) for _ in range(QUEUED)]
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the master has closed its listener and signalled the workers
    finally:
        for pid in held:
            os.kill(pid, signal.SIGCONT)
    answers = []
    for conn in sent:
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        conn.close()
    assert server.process.wait(30) == 0
    assert [status for status, _ in answers] == [200] * QUEUED
    answered = {body["prediction_id"] for _, body in answers}
    assert len(answered) == QUEUED
    missing = answered - stored_ids(server.database)
    assert not missing, f"{len(missing)} of {QUEUED} answered predictions not stored"


def test_a_kept_alive_connection_used_right_after_the_stop_is_answered_and_closed(
        server, example):
    body = json.dumps(example).encode()
    kept = [post(server.port, body) for _ in range(4)]
    for conn in kept:
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    for conn in kept:
        conn.request("POST", "/predict", body=body,
                     headers={**CLIENT_HEADERS, "Content-Type": "application/json"})
    for conn in kept:
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["prediction_id"]
        assert response.getheader("Connection") == "close"
        conn.close()
    assert server.process.wait(30) == 0


def test_clients_that_keep_closed_connections_open_do_not_stall_the_worker(
        trained_model_dir, tmp_path):
    # gunicorn's own gthread waits up to 2 s per such client on its event loop, during
    # which the worker accepts and finishes nothing (4 clients: ~8 s).
    server = Server(trained_model_dir, tmp_path, WEB_CONCURRENCY="1")
    holders = []
    try:
        server.wait_ready()
        auth = "".join(f"{k}: {v}\r\n" for k, v in CLIENT_HEADERS.items()).encode()
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /health_check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         + auth + b"\r\n")
            holders.append(sock)  # read nothing, close nothing
        time.sleep(0.2)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        conn.request("GET", "/health_check", headers=CLIENT_HEADERS)
        assert conn.getresponse().status == 200
        took = time.monotonic() - started
        conn.close()
    finally:
        for sock in holders:
            sock.close()
        server.stop()
    assert took < 1.0, f"a health check waited {took:.1f} s behind closing connections"
