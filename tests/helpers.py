"""Helpers shared by the test modules: ports, HTTP calls, a real gunicorn, error checks.

Fixtures live in ``conftest.py``; plain functions and classes live here so a test module
can import them by name (``from helpers import assert_error``).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
ERROR_KEYS = {"error", "message", "details"}
SECRET = 987654321  # a value tests send that must never come back in an error

# Headers every test request carries, in-process and over HTTP: the one place where
# credentials go once the API asks for them.
CLIENT_HEADERS: dict[str, str] = {}


def children(pid: int) -> list[int]:
    """The process ids ``pid`` forked (from its main thread: gunicorn's workers, a
    postmaster's backends), from /proc."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_error(response, status: int) -> dict:
    """Check a Flask test response is the one JSON error shape with ``status``; its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ERROR_KEYS
    assert isinstance(body["message"], str) and body["message"]
    assert all(set(d) == {"field", "problem"} for d in body["details"])
    assert str(SECRET) not in response.get_data(as_text=True)
    return body


def json_lines(text: str) -> list[dict]:
    """The log records in captured stdout; fails if a non-empty line is not JSON."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def request_lines(text: str, endpoint: str | None = None) -> list[dict]:
    """The per-request audit lines in captured stdout, for one endpoint or all."""
    return [r for r in json_lines(text) if r.get("message") == "request"
            and (endpoint is None or r.get("endpoint") == endpoint)]


def metric_samples(text: str, metric: str, **labels) -> list:
    """Samples of ``metric`` in a Prometheus exposition whose labels include ``labels``."""
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric and all(sample.labels.get(k) == v
                                             for k, v in labels.items())]


def metric_value(client, metric: str, **labels) -> float:
    """The first matching sample of ``metric`` on the app's ``GET /metrics`` (0 if none)."""
    samples = metric_samples(client.get("/metrics").get_data(as_text=True), metric, **labels)
    return samples[0].value if samples else 0.0


def call(url: str, body=None, headers: dict | None = None, method: str | None = None,
         timeout: float = 10):
    """(status, headers, parsed JSON or text) of one real HTTP request."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    request = urllib.request.Request(url, data=body, method=method, headers={
        **CLIENT_HEADERS, **({"Content-Type": "application/json"} if body is not None else {}),
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    text = raw.decode()
    return status, head, json.loads(text) if head.get_content_type() == "application/json" else text


def log_records(path: Path) -> list[dict]:
    """Every line of a server's stdout log, parsed (fails if one is not JSON)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Server:
    """One gunicorn master started with the production command line, 2 workers.

    Args:
        model_dir: the artifact (or models dir) to serve.
        tmp: a fresh directory for the log, HOME, TMPDIR and the SQLite store.
        env: extra environment (settings of ``app.config``).
    """

    START_TIMEOUT = 30.0  # waiting only; tests assert their own bound on the start time

    def __init__(self, model_dir: Path, tmp: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "stdout.log"
        self.home = tmp / "home"
        self.home.mkdir()
        self.database = tmp / "predictions.db"
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("PROMETHEUS_MULTIPROC_DIR", "XDG_RUNTIME_DIR")}
        environ.update(PORT=str(self.port), MODEL_DIR=str(model_dir), WEB_CONCURRENCY="2",
                       HOME=str(self.home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1",
                       DATABASE_URL=f"sqlite:///{self.database}")
        environ.update(env)  # a test may name another database
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", "app:create_app()"],
                cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> float:
        """Seconds from the start until ``/ready`` answered 200."""
        while time.monotonic() - self.started < self.START_TIMEOUT:
            if self.process.poll() is not None:
                raise AssertionError("gunicorn exited:\n" + self.log.read_text())
            try:
                if call(self.url + "/ready", timeout=1)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("not ready in time:\n" + self.log.read_text())

    def stop(self) -> None:
        """Kill the master if it still runs (tests that test the graceful stop do their own)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_or_skip(chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> None:
    """Skip without a browser on a developer machine; fail in CI, which must run them."""
    missing = [p for p in (chromium, chromedriver) if not os.path.exists(p)]
    if missing:
        message = f"headless Chromium is not installed ({', '.join(missing)} missing)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser test (make system-deps)")
        pytest.skip(message)


def officer_and_viewer_keys(directory: Path) -> tuple[str, dict[str, str]]:
    """A key file in ``directory`` where "officer" may score and "viewer" may only monitor:
    (its path, {name: key})."""
    from app.auth_keys import create_key

    path = str(directory / "keys.yaml")
    return path, {"officer": create_key(path, "officer", ["score"]),
                  "viewer": create_key(path, "viewer", ["monitor"])}


def blanked_german(spec, directory: Path, seed: int):
    """The embedded data with ~10 % of feature cells blanked (``seed``), read with every
    feature nullable: (X, y, the nullable spec)."""
    import numpy as np

    from ml.spec.config import DEFAULT_DATA
    from ml.spec.schema import DatasetSpec
    from ml.training.data import load_dataset, read_raw

    raw = read_raw(DEFAULT_DATA)
    rng = np.random.default_rng(seed)
    for f in spec.features:
        raw.loc[rng.random(len(raw)) < 0.1, f.source_column] = ""
    path = directory / "blanked.csv"
    raw.to_csv(path, index=False)
    nullable = spec.to_dict()
    for f in nullable["features"]:
        f["nullable"] = True
    nullable_spec = DatasetSpec.from_dict(nullable)
    data = load_dataset(path, nullable_spec)
    return data.X, data.y, nullable_spec
