"""What a graceful stop (SIGTERM to the gunicorn master) does to requests already sent.

Starts the real server command (``gunicorn -c gunicorn.conf.py 'app:create_app()'``,
2 gthread workers x 4 threads, the default SQLite write-behind store), then per round:

  queued:     CONNS connections each send one ``POST /predict`` (a batch of ROWS
              applicants, so the requests queue behind the 8 threads and in the listen
              backlog); SIGTERM the master DELAY_MS after the last one is sent; read every
              answer.
  keep-alive: KEEPALIVE connections each get one answer and stay open; SIGTERM; each sends
              its next request LATE_MS later.
  new:        after the SIGTERM (+100 ms), NEW fresh connections try one request each.

Each connection is counted as answered (HTTP 200), other status, reset, closed (EOF before
an answer), refused or timeout. Afterwards every answered prediction id is looked up in the
store. Prints a table and writes ``benchmarks/results/graceful.json``.

Usage: ``python benchmarks/bench_graceful.py [--model-dir DIR] [--rounds 3] [--conns 64]``.
Needs ``MODEL_TRUSTED_KEYS`` (and a model signed by one of its keys) as the server does.
"""
from __future__ import annotations

import argparse
import http.client
import json
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

from bench_http import Server, ensure_model  # noqa: E402
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
    """One stop of a fresh server under the three kinds of connections; counts per kind."""
    single = json.dumps(example).encode()
    batch = json.dumps({"instances": [example] * args.rows}).encode()
    ids: list[tuple[str, int]] = []
    alive = [send(server.port, single) for _ in range(args.keepalive)]
    for conn in alive:  # one answer each; http.client keeps the connection open
        conn.getresponse().read()
    queued = [send(server.port, batch) for _ in range(args.conns)]
    time.sleep(args.delay_ms / 1000)
    server.process.send_signal(signal.SIGTERM)
    stopped = time.perf_counter()
    time.sleep(args.late_ms / 1000)
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
    counts = {
        "queued": Counter(outcome(c, ids) for c in queued),
        "keepalive": Counter(c if isinstance(c, str) else outcome(c, ids) for c in late),
        "new": Counter(c if isinstance(c, str) else outcome(c, ids) for c in fresh),
    }
    rc = server.process.wait(60)
    stop_s = time.perf_counter() - stopped
    with sqlite3.connect(server.database) as db:
        stored = dict(db.execute("SELECT prediction_id, count(*) FROM predictions "
                                 "GROUP BY prediction_id").fetchall())
    return {**{k: dict(v) for k, v in counts.items()}, "exit_code": rc,
            "stop_s": round(stop_s, 2), "answered_requests": len(ids),
            "answered_not_stored": sum(stored.get(pid, 0) < n for pid, n in ids)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=models_dir())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--keepalive", type=int, default=16)
    parser.add_argument("--late-ms", type=float, default=50)
    parser.add_argument("--new", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    args = parser.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-graceful-") as tmp:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="bench-graceful-")
        model_dir = ensure_model(args.model_dir, Path(tmp))
        example = dict(read_card(model_dir)["example"])
        for i in range(args.rounds):
            work = Path(tmp) / f"round{i}"
            work.mkdir()
            database = work / "predictions.db"
            server = Server("app:create_app()", model_dir, work,
                            DATABASE_URL=f"sqlite:///{database}", HOME=str(work))
            server.database = database
            try:
                server.wait_ready()
                rounds.append(one_round(server, args, example))
            finally:
                if server.process.poll() is None:
                    server.process.kill()
                server.log.close()
            print(json.dumps(rounds[-1]), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                   "date": time.strftime("%Y-%m-%d"), "rounds": rounds},
                                  indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
