"""The serving boundary: what a server worker and the jobs beside it may load.

Two checks of one rule ("the API never loads training code, scikit-learn, scipy, pandas
or matplotlib"): statically, the import-linter contracts in ``setup.cfg`` (and proof that
they catch a forbidden import); at run time, a real gunicorn driven through every route,
after which no process of it has any of those libraries' shared objects mapped.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from helpers import ROOT, Server, call, children, log_records

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# The compiled extensions each forbidden library loads as soon as it is imported.
FORBIDDEN = ("sklearn", "scipy", "pandas", "matplotlib")
FORBIDDEN_SO = re.compile(r"/site-packages/(%s)(\.libs)?/\S*\.so" % "|".join(FORBIDDEN))
NUMPY_SO = re.compile(r"/site-packages/numpy/\S*\.so")
ROUNDS = 40  # tries per route to have it answered by each of the two workers


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` run on the tree at ``cwd`` (its setup.cfg, its packages)."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- static


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    for package in ("app", "ml"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    schema = tmp_path / "ml" / "spec" / "config.py"
    schema.write_text(schema.read_text() + "\n\ndef _leak():\n    import sklearn  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "ml.spec is not allowed to import sklearn" in result.stdout
    assert "ml.spec.config -> sklearn" in result.stdout


# --------------------------------------------------------------------------- runtime


def mapped_objects(pid: int) -> set[str]:
    """Paths of the files a process has mapped (its shared objects among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in lines if len(line.split(None, 5)) == 6}


@pytest.fixture(scope="module")
def server(trained_model_dir, tmp_path_factory):
    server = Server(trained_model_dir, tmp_path_factory.mktemp("boundary"))
    server.wait_ready()
    yield server
    server.stop()


def requests_for_every_route(server: Server) -> dict[str, tuple]:
    """One request per route (name -> call arguments), each answered 2xx when sent."""
    example = call(server.url + "/model")[2]["example"]
    form = urllib.parse.urlencode({k: "" if v is None else v for k, v in example.items()})
    return {
        "/predict": ("/predict", example, {"X-Request-ID": "boundary"}),
        "/feedback": None,  # addressed to the prediction made first (its prediction_id)
        "/monitoring": ("/monitoring?last=50",),
        "/metrics": ("/metrics",),
        "/model": ("/model",),
        "/ready": ("/ready",),
        "/health_check": ("/health_check",),
        "GET /": ("/",),
        "POST /": ("/", form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}),
        "/apidocs/": ("/apidocs/",),
        "/apispec_1.json": ("/apispec_1.json",),
    }


@pytest.mark.slow
def test_no_worker_loads_training_libraries_after_every_route(server):
    routes = requests_for_every_route(server)
    # Stored before it is labelled: the feedback may reach the other worker.
    status, _, made = call(server.url + "/predict", *routes["/predict"][1:])
    assert status == 200
    routes["/feedback"] = ("/feedback", {"prediction_id": made["prediction_id"],
                                         "outcome": "bad"})
    time.sleep(1.0)  # > STORE_FLUSH_SECONDS (0.2 s), the write-behind delay
    served: dict[str, set[int]] = {name: set() for name in routes}
    for round_ in range(ROUNDS):
        for name, (path, *rest) in routes.items():
            if len(served[name]) < 2:
                request_id = f"route-{round_}-{len(served[name])}-{abs(hash(name))}"
                headers = {**(rest[1] if len(rest) > 1 else {}), "X-Request-ID": request_id}
                status = call(server.url + path, rest[0] if rest else None, headers)[0]
                assert status < 300, (name, status)
                pid = [r["pid"] for r in log_records(server.log)
                       if r.get("request_id") == request_id]
                served[name].update(pid)
        if all(len(pids) == 2 for pids in served.values()):
            break
    assert all(len(pids) == 2 for pids in served.values()), served

    workers = children(server.process.pid)
    assert set().union(*served.values()) <= set(workers)
    for pid in [server.process.pid, *workers]:
        objects = mapped_objects(pid)
        assert any(NUMPY_SO.search(o) for o in objects), "maps hold no numpy: wrong reading"
        loaded = sorted(o for o in objects if FORBIDDEN_SO.search(o))
        assert loaded == [], f"process {pid} loaded: {loaded[:5]}"


@pytest.mark.slow
def test_the_monitor_job_imports_no_training_code_sklearn_scipy_or_pandas(
        trained_model_dir, tmp_path):
    # -X importtime lists every module the real command imports, on stderr.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ml", "monitor", "--database-url",
         f"sqlite:///{tmp_path / 'p.db'}", "--model", str(trained_model_dir),
         "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "ml.monitoring.report" in imported and "numpy" in imported
    leaked = sorted(m for m in imported
                    if m.split(".")[0] in ("sklearn", "scipy", "pandas")
                    or m.startswith("ml.training"))
    assert leaked == []
