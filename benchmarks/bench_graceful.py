"""What a graceful stop (SIGTERM to the gunicorn master) does to requests already sent.

Starts the real server command (``gunicorn -c gunicorn.conf.py 'app:create_app()'``, 2
workers x 4 threads, the default SQLite write-behind store) as shipped, and as a baseline
with gunicorn's own ``gthread`` worker (``GUNICORN_CMD_ARGS=--worker-class gthread``),
interleaved. Each round stops a fresh server with four kinds of connections:

  queued:     CONNS connections each send one ``POST /predict`` (a batch of ROWS
              applicants, so requests wait behind the 8 threads); the client reads the
              answers in turn, as a proxy with many upstream connections does.
  backlog:    the workers are held still (SIGSTOP) while BACKLOG connections send a
              request, so these wait in the kernel's listen backlog; then SIGTERM to the
              master, and SIGCONT 50 ms later (workers busy when the stop begins).
  keep-alive: KEEPALIVE connections each got one answer and stayed open; each sends its
              next request LATE_MS after the SIGTERM.
  new:        100 ms after the SIGTERM, NEW fresh connections try one request each
              (refused is the right answer: the client knows nothing was sent).

Each connection counts as answered (HTTP 200), other status, reset, closed (EOF before an
answer), refused or timeout; then every answered prediction is looked up in the store.
Prints the sums per server and writes ``benchmarks/results/graceful.json``.

Usage: ``python benchmarks/bench_graceful.py [--model-dir DIR] [--rounds 3]``. Needs
``MODEL_TRUSTED_KEYS`` (and a model signed by one of its keys), as the server does.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_http import Server, children, ensure_model  # noqa: E402
from ml.serving.artifact import read_card  # noqa: E402
from ml.spec.config import models_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "graceful.json"


def send(port: int, body: bytes, timeout: float = 60) -> http.client.HTTPConnection:
    """A new connection with one ``POST /predict`` sent, its answer not read yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/predict?reasons=false", body=body,
                 headers={"Content-Type": "application/json"})
    return conn


def outcome(conn: http.client.HTTPConnection, ids: list[tuple[str, int]]) -> str:
    """Read one answer: its class; a 200's (prediction id, rows) appended to ``ids``."""
    try:
        response = conn.getresponse()
        data = response.read()
    except http.client.RemoteDisconnected:
        return "closed"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    finally:
        conn.close()
    if response.status != 200:
        return f"status {response.status}"
    answer = json.loads(data)
    ids.append((answer["prediction_id"], len(answer.get("predictions", [answer]))))
    return "answered"


def try_send(port: int, body: bytes) -> http.client.HTTPConnection | str:
    """``send``, or the class of its failure (refused, reset)."""
    try:
        return send(port, body)
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"


def one_round(server: Server, args: argparse.Namespace, example: dict) -> dict:
    """One stop of a fresh server under the four kinds of connections; counts per kind."""
    single = json.dumps(example).encode()
    batch = json.dumps({"instances": [example] * args.rows}).encode()
    ids: list[tuple[str, int]] = []
    alive = [send(server.port, single) for _ in range(args.keepalive)]
    for conn in alive:  # one answer each; http.client keeps the connection open
        conn.getresponse().read()
    queued = [send(server.port, batch) for _ in range(args.conns)]
    time.sleep(args.delay_ms / 1000)
    held = children(server.process.pid)
    for pid in held:  # workers held still: what is sent now waits in the listen backlog
        os.kill(pid, signal.SIGSTOP)
    backlog = [send(server.port, single) for _ in range(args.backlog)]
    server.process.send_signal(signal.SIGTERM)
    stopped = time.perf_counter()
    time.sleep(0.05)
    for pid in held:
        os.kill(pid, signal.SIGCONT)
    time.sleep(max(0.0, args.late_ms / 1000 - (time.perf_counter() - stopped)))
    late = []
    for conn in alive:
        try:
            conn.request("POST", "/predict?reasons=false", body=single,
                         headers={"Content-Type": "application/json"})
            late.append(conn)
        except (ConnectionResetError, BrokenPipeError):
            late.append("reset")
    time.sleep(max(0.0, 0.1 - (time.perf_counter() - stopped)))
    fresh = [try_send(server.port, single) for _ in range(args.new)]
    counts = {kind: Counter(c if isinstance(c, str) else outcome(c, ids) for c in conns)
              for kind, conns in (("queued", queued), ("backlog", backlog),
                                  ("keepalive", late), ("new", fresh))}
    rc = server.process.wait(60)
    stop_s = time.perf_counter() - stopped
    with sqlite3.connect(server.database) as db:
        stored = dict(db.execute("SELECT prediction_id, count(*) FROM predictions "
                                 "GROUP BY prediction_id").fetchall())
    return {**{k: dict(v) for k, v in counts.items()}, "exit_code": rc,
            "stop_s": round(stop_s, 2), "answered_requests": len(ids),
            "answered_not_stored": sum(stored.get(pid, 0) < n for pid, n in ids)}


def start(model_dir: Path, work: Path, worker_class: str | None) -> Server:
    """A ready server; ``worker_class`` overrides gunicorn.conf.py's (the baseline)."""
    work.mkdir()
    database = work / "predictions.db"
    extra = {"GUNICORN_CMD_ARGS": f"--worker-class {worker_class}"} if worker_class else {}
    server = Server("app:create_app()", model_dir, work, HOME=str(work),
                    DATABASE_URL=f"sqlite:///{database}", **extra)
    server.database = database
    server.wait_ready()
    time.sleep(1)  # both workers in their accept loops, not only the one that was ready
    return server


def summary(rounds: list[dict]) -> dict:
    """Counts per kind of connection summed over rounds, the slowest stop, the losses."""
    total = {kind: dict(sum((Counter(r[kind]) for r in rounds), Counter()))
             for kind in ("queued", "backlog", "keepalive", "new")}
    return {**total, "rounds": len(rounds), "max_stop_s": max(r["stop_s"] for r in rounds),
            "answered_not_stored": sum(r["answered_not_stored"] for r in rounds),
            "nonzero_exits": sum(r["exit_code"] != 0 for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=models_dir())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=32)
    parser.add_argument("--keepalive", type=int, default=16)
    parser.add_argument("--late-ms", type=float, default=200)
    parser.add_argument("--new", type=int, default=8)
    args = parser.parse_args(argv)
    rounds: dict[str, list[dict]] = {"gthread": [], "shipped": []}
    with tempfile.TemporaryDirectory(prefix="bench-graceful-") as tmp:
        model_dir = ensure_model(args.model_dir, Path(tmp))
        example = dict(read_card(model_dir)["example"])
        for i in range(args.rounds):  # interleaved, so both see the same machine load
            for name in rounds:
                server = start(model_dir, Path(tmp) / f"{name}{i}",
                               "gthread" if name == "gthread" else None)
                try:
                    rounds[name].append(one_round(server, args, example))
                finally:
                    if server.process.poll() is None:
                        server.process.kill()
                    server.log.close()
                print(name, json.dumps(rounds[name][-1]), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args) | {
        "model_dir": str(args.model_dir)}, **{k: summary(v) for k, v in rounds.items()},
        "rounds": rounds}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    for name in ("gthread", "shipped"):
        print(name, json.dumps(report[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
