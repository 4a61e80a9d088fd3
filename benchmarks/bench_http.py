"""HTTP benchmark of the real server command against a bare-Flask ceiling.

Starts ``gunicorn -c gunicorn.conf.py`` (2 workers, the production settings) with
``benchmarks/ceiling_app.py``, then with the API as shipped (the default prediction
store: SQLite, write-behind), and drives each with ``wrk`` (8 connections; 2
interleaved rounds of 5 s per scenario, the best reported, so a burst of load from
elsewhere on the machine does not decide a figure):

  a. ceiling: bare Flask JSON endpoint (same body, same gunicorn settings)
  b. POST /predict?reasons=false, one applicant (issue 15's target: >= 50 % of a.)
  c. POST /predict, one applicant with reason codes (the target: >= 55 % of a.)
  e. POST /predict?reasons=false, a batch of 1,000 applicants (server time from the
     ``Server-Timing`` header over sequential requests)
  f. b. and a. with one connection: latency without queueing behind other requests
     (with 8 connections on 2 sync workers, p99 is mostly time spent waiting in line)
  g. b. and a. paced: 8 connections that each pause PACE_MS between requests (about a
     third of the ceiling's throughput), the tail of a server that is not saturated

and reports req/s, ratios to the ceiling, the workers' CPU per request (and the
ceiling's divided by the API's: the ratio without the load of other jobs), p50/p99
latency, seconds from start to
``/ready`` 200, and the PSS of master + workers (``/proc/<pid>/smaps_rollup``).
Prints a table and writes ``benchmarks/results/http.json``.

Usage: ``python benchmarks/bench_http.py [--model-dir DIR] [--duration 5] [--rounds 2]
[--no-auth | --auth-only]``. Without a model in ``--model-dir`` (default: ``MODEL_DIR`` or
``models/``) one is trained first.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml.serving.artifact import ArtifactError, read_card  # noqa: E402
from ml.spec.config import models_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "http.json"
GUNICORN = Path(sys.executable).with_name("gunicorn")
TARGETS = {"predict_ratio": 0.50, "reasons_ratio": 0.55, "p99_ms": 5.0, "ready_s": 1.5,
           "pss_mb": 300.0, "batch_ms": 50.0}
# Scenario g.: each of the 8 connections pauses this long between requests.
PACE_MS = 8


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A gunicorn master started with the repository's gunicorn.conf.py."""

    def __init__(self, app: str, model_dir: Path, workdir: Path, workers: int = 2,
                 **settings: str):
        self.port = free_port()
        self.log = open(workdir / f"{app.split(':')[0]}-{self.port}.log", "wb")
        # Each server its own temporary directory, so its own default SQLite store and
        # spool: two servers on one file contend for its write lock.
        own = workdir / f"tmp-{self.port}"
        own.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(PORT=str(self.port), MODEL_DIR=str(model_dir), WEB_CONCURRENCY=str(workers),
                   TMPDIR=str(own))
        # a.-g. measure the serving path without access control; h. measures its cost.
        env.update({"AUTH_REQUIRED": "false", "RATELIMIT_PREDICT": "1000000/second",
                    **settings})
        self.started = time.perf_counter()
        self.process = subprocess.Popen([str(GUNICORN), "-c", "gunicorn.conf.py", app],
                                        cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from starting the process to the first ``GET /ready`` 200."""
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early; see {self.log.name}")
            try:
                status, _, _ = request(self.port, "GET", "/ready", timeout=1)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"not ready after {timeout} s; see {self.log.name}")

    def pss_mb(self) -> float:
        """Proportional set size of the master and its workers, summed, in MB."""
        pids = [self.process.pid, *children(self.process.pid)]
        return sum(pss_kb(pid) for pid in pids) / 1024

    def stop(self) -> None:
        """SIGTERM, and wait for the graceful exit."""
        self.process.terminate()
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if path.exists():
        return [int(p) for p in path.read_text().split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def pss_kb(pid: int) -> int:
    """``Pss`` of one process from ``/proc/<pid>/smaps_rollup``, in kB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^Pss:\s+(\d+) kB", text, re.M).group(1))


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wrk(port: int, path: str, body: bytes, duration: int, workdir: Path,
        connections: int = 8, threads: int = 2, pause_ms: int = 0,
        headers: dict[str, str] | None = None) -> dict[str, float]:
    """Drive ``POST path`` with wrk; requests/s, p50 and p99 latency in ms, error count.

    ``pause_ms``: each connection waits this long after an answer before its next
    request (wrk's ``delay()``), instead of sending it at once.
    """
    script = workdir / "post.lua"
    script.write_text("wrk.method = \"POST\"\n"
                      "wrk.headers[\"Content-Type\"] = \"application/json\"\n"
                      f"wrk.body = {json.dumps(body.decode())}\n"
                      + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n"
                                for k, v in (headers or {}).items())
                      + (f"function delay() return {pause_ms} end\n" if pause_ms else ""))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        # Sync workers close each connection; wrk counts those as read errors.
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def wrk_with_cpu(server: Server, path: str, body: bytes, duration: int, workdir: Path,
                 **options) -> dict[str, float]:
    """:func:`wrk`, plus the workers' CPU per request in µs: what the server spends on a
    request whoever else loads the machine (req/s moves with the load of other jobs)."""
    before = workers_cpu_s(server.process.pid)
    run = wrk(server.port, path, body, duration, workdir, **options)
    spent = workers_cpu_s(server.process.pid) - before
    run["cpu_us_per_request"] = 1e6 * spent / max(run["requests_per_s"] * duration, 1.0)
    return run


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def batch_times(port: int, body: bytes, n: int = 40) -> dict[str, float]:
    """Server and round-trip milliseconds of ``n`` sequential 1,000-applicant requests."""
    server, client = [], []
    for _ in range(n + 3):
        started = time.perf_counter()
        status, headers, _ = request(port, "POST", "/predict?reasons=false", body)
        client.append((time.perf_counter() - started) * 1000)
        assert status == 200, status
        server.append(float(re.search(r"dur=([\d.]+)", headers["Server-Timing"]).group(1)))
    server, client = server[3:], client[3:]  # the first ones warm the worker up
    return {"server_p50_ms": statistics.median(server),
            "server_p99_ms": _quantile(server, 0.99),
            "roundtrip_p50_ms": statistics.median(client),
            "records_per_s": 1000 / (statistics.median(client) / 1000)}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ensure_model(model_dir: Path, workdir: Path) -> Path:
    """``model_dir`` if it holds an artifact, else a freshly trained one (a minute or so)."""
    try:
        read_card(model_dir)
        return model_dir
    except ArtifactError:
        out = workdir / "models"
        print(f"no model in {model_dir}: training one into {out} ...", flush=True)
        subprocess.run([sys.executable, "-m", "ml", "-q", "train", "--out", str(out),
                        "--cv-repeats", "1", "--no-plots"], cwd=ROOT, check=True)
        return out


def best_run(runs: list[dict]) -> dict:
    """The run with the highest throughput (the one least disturbed by other load)."""
    return max(runs, key=lambda r: r["requests_per_s"])


def run_all(model_dir: Path, workdir: Path, duration: int, rounds: int) -> dict:
    """Start both servers, time their start-ups, run every scenario, read memory, stop."""
    card = read_card(model_dir)
    single = json.dumps(card["example"]).encode()
    batch = json.dumps({"instances": [card["example"]] * 1000}).encode()
    # Started one after the other, so each start-up is timed alone; idle sync workers
    # cost nothing while the other server is measured.
    ceiling = Server("benchmarks.ceiling_app:create_app()", model_dir, workdir)
    api = None
    try:
        measured = {"ceiling_ready_s": ceiling.wait_ready()}
        api = Server("app:create_app()", model_dir, workdir)
        measured["ready_s"] = api.wait_ready()
        measured["pss_mb_idle"] = api.pss_mb()
        scenarios = {"ceiling": (ceiling, "/predict"),
                     "predict": (api, "/predict?reasons=false"),
                     "reasons": (api, "/predict")}
        # Interleaved rounds: a burst of load from elsewhere on the machine hits one
        # round of every scenario rather than every round of one.
        runs: dict[str, list[dict]] = {name: [] for name in scenarios}
        for _ in range(rounds):
            for name, (server, path) in scenarios.items():
                runs[name].append(wrk_with_cpu(server, path, single, duration, workdir))
        for name in ("ceiling", "predict"):
            server, path = scenarios[name]
            measured[f"{name}_1c"] = wrk(server.port, path, single, duration, workdir,
                                         connections=1, threads=1)
            measured[f"{name}_paced"] = wrk(server.port, path, single, duration, workdir,
                                            pause_ms=PACE_MS)
        measured["batch"] = batch_times(api.port, batch)
        measured["pss_mb"] = api.pss_mb()
        measured["ceiling_pss_mb"] = ceiling.pss_mb()
        measured.update({name: best_run(r) for name, r in runs.items()}, rounds=runs)
        measured["cpu_us_per_request"] = {name: min(r["cpu_us_per_request"] for r in rs)
                                          for name, rs in runs.items()}
    finally:
        for server in (ceiling, api):
            if server is not None:
                server.stop()
    return measured


def auth_costs(model_dir: Path, workdir: Path, duration: int, rounds: int) -> dict:
    """h. single-record ``/predict?reasons=false`` without auth, with an API key, with an
    OIDC JWT (keys from a JWKS served here), on three servers measured in interleaved
    rounds; req/s, p50/p99 and each one's cost against no auth (targets: key <= 5 %,
    JWT <= 10 %)."""
    from app.auth import SCOPES
    from app.auth_keys import create_key

    provider, issuer, token = jwks_provider()
    key = create_key(str(workdir / "keys.yaml"), "bench", SCOPES)
    auth = {"AUTH_REQUIRED": "true", "API_KEYS_FILE": str(workdir / "keys.yaml"),
            "OIDC_ISSUER": issuer, "OIDC_AUDIENCE": "bench", "OIDC_JWKS_URL": issuer + "/jwks"}
    body = json.dumps(read_card(model_dir)["example"]).encode()
    servers = {}
    try:
        servers["none"] = Server("app:create_app()", model_dir, workdir)
        servers["none"].wait_ready()
        servers["api_key"] = Server("app:create_app()", model_dir, workdir, **auth)
        servers["api_key"].wait_ready()
        servers["jwt"] = servers["api_key"]  # the same server, the other credential
        headers = {"none": {}, "api_key": {"Authorization": f"Bearer {key}"},
                   "jwt": {"Authorization": f"Bearer {token}"}}
        runs: dict[str, list[dict]] = {name: [] for name in headers}
        names = list(headers)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:  # each kind goes first once in 3
                runs[name].append(wrk_with_cpu(servers[name], "/predict?reasons=false", body,
                                               duration, workdir, headers=headers[name]))
    finally:
        for server in set(servers.values()):
            server.stop()
        provider.shutdown()
    best = {name: best_run(r) for name, r in runs.items()}
    base = best["none"]["requests_per_s"]
    cpu = {name: min(r["cpu_us_per_request"] for r in runs[name]) for name in runs}
    for name in ("api_key", "jwt"):
        best[name]["cost_vs_none"] = 1 - best[name]["requests_per_s"] / base
        best[name]["cpu_cost_vs_none"] = cpu[name] / cpu["none"] - 1
    return {**best, "cpu_us_per_request": cpu, "rounds": runs,
            "met": {"api_key_cost": best["api_key"]["cost_vs_none"] <= 0.05,
                    "jwt_cost": best["jwt"]["cost_vs_none"] <= 0.10}}


def jwks_provider():
    """A JWKS of a fresh RSA key on a local HTTP server: (server, issuer URL, a token for
    audience ``bench`` with the ``score`` scope)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = json.dumps({"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(
        signer.public_key())), "kid": "bench", "use": "sig"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(jwks)))
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    Thread(target=server.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{server.server_port}"
    token = jwt.encode({"iss": issuer, "aud": "bench", "sub": "bench", "scope": "score",
                        "exp": int(time.time()) + 3600}, signer, "RS256",
                       headers={"kid": "bench"})
    return server, issuer, token


def auth_in_process(model_dir: Path, workdir: Path, blocks: int = 15,
                    per_block: int = 200) -> dict:
    """h. without the HTTP server: one app per credential kind (Flask test client), blocks
    of ``per_block`` single-record /predict calls interleaved across the kinds; the
    block of least CPU time of each is its cost (robust on a shared, loaded machine,
    where throughput varies by tens of percent between runs). Returns µs per request."""
    from app import create_app
    from app.auth import SCOPES
    from app.auth_keys import create_key

    provider, issuer, token = jwks_provider()
    keys_file = str(workdir / "keys-in-process.yaml")
    key = create_key(keys_file, "bench", SCOPES)
    base = {"MODEL_DIR": str(model_dir), "RATELIMIT_PREDICT": "1000000/second",
            "LOG_LEVEL": "WARNING"}
    plain = create_app({**base, "AUTH_REQUIRED": False,
                        "DATABASE_URL": f"sqlite:///{workdir / 'plain.db'}"})
    secured = create_app({**base, "DATABASE_URL": f"sqlite:///{workdir / 'secured.db'}",
                          "API_KEYS_FILE": keys_file, "OIDC_ISSUER": issuer,
                          "OIDC_AUDIENCE": "bench", "OIDC_JWKS_URL": issuer + "/jwks"})
    kinds = {"none": (plain, {}), "api_key": (secured, {"Authorization": f"Bearer {key}"}),
             "jwt": (secured, {"Authorization": f"Bearer {token}"})}
    body = read_card(model_dir)["example"]
    best = {name: float("inf") for name in kinds}
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink  # the request lines
        try:
            for _ in range(blocks):
                for name, (app, headers) in kinds.items():
                    client = app.test_client()
                    # CPU time of this thread: time spent preempted by other load is not
                    # counted (the store's writer thread is not either, for every kind).
                    started = time.thread_time()
                    for _ in range(per_block):
                        assert client.post("/predict?reasons=false", json=body,
                                           headers=headers).status_code == 200
                    best[name] = min(best[name], (time.thread_time() - started) / per_block)
        finally:
            sys.stdout = stdout
            provider.shutdown()
    return {"us_per_request": {k: v * 1e6 for k, v in best.items()},
            "cost_vs_none": {k: best[k] / best["none"] - 1 for k in ("api_key", "jwt")}}


def workers_cpu_s(master: int) -> float:
    """User + system CPU seconds of the master's worker processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in children(master):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def print_auth(result: dict) -> None:
    """h. as lines: req/s, latency and cost of each credential."""
    for name, label in (("none", "no auth"), ("api_key", "API key"), ("jwt", "OIDC JWT")):
        s = result[name]
        cost = (f", cost {s['cost_vs_none']:+.1%} (req/s), {s['cpu_cost_vs_none']:+.1%} "
                "(CPU per request)" if "cost_vs_none" in s else "")
        cost = f", {result['cpu_us_per_request'][name]:.0f} us CPU/request" + cost
        print(f"h. /predict?reasons=false, {label}: {s['requests_per_s']:.0f} req/s, "
              f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, non-2xx {s['non_2xx']}"
              f"{cost}")
    if "in_process" in result:
        ip = result["in_process"]
        print("h. in process, CPU per request (least of the blocks): " + ", ".join(
            f"{k} {v:.0f} us" for k, v in ip["us_per_request"].items()) + "; cost " + ", ".join(
            f"{k} {v:+.1%}" for k, v in ip["cost_vs_none"].items()))
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                  for k, v in result["met"].items()))


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table, write the JSON; non-zero if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=models_dir())
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="wrk runs per scenario, interleaved; the best one is reported")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--auth-only", action="store_true",
                      help="run only h. (the cost of access control)")
    only.add_argument("--no-auth", action="store_true",
                      help="skip h. (the cost of access control), for a shorter run")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        model_dir = ensure_model(args.model_dir, workdir)
        load_before = os.getloadavg()
        auth = None
        if not args.no_auth:
            auth = auth_costs(model_dir, workdir, args.duration, args.rounds)
            auth["in_process"] = auth_in_process(model_dir, workdir)
        if args.auth_only:
            print_auth(auth)
            print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
            return 0 if all(auth["met"].values()) else 1
        measured = run_all(model_dir, workdir, args.duration, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(measured, read_card(model_dir), args, load_before)
    if auth is not None:
        report["figures"]["auth"] = auth
        report["met"].update(auth["met"])
    print_table(report)
    if auth is not None:
        print_auth(auth)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {RESULTS.relative_to(ROOT)}")
    return 0 if all(report["met"].values()) else 1


def build_report(m: dict, card: dict, args: argparse.Namespace, load: tuple) -> dict:
    """All figures, the targets and whether each is met."""
    top = m["ceiling"]["requests_per_s"]
    cpu = m["cpu_us_per_request"]
    figures = {
        # Workers' CPU per request (least of the rounds), and the ceiling's divided by
        # the API's: the throughput ratio the server alone would reach on a machine of
        # its own, less sensitive to other jobs than req/s.
        "cpu_us_per_request": cpu,
        "cpu_ratio_to_ceiling": {k: cpu["ceiling"] / cpu[k] for k in ("predict", "reasons")},
        "ceiling": m["ceiling"],
        "predict": {**m["predict"], "ratio_to_ceiling": m["predict"]["requests_per_s"] / top},
        "reasons": {**m["reasons"], "ratio_to_ceiling": m["reasons"]["requests_per_s"] / top},
        "batch_1000": m["batch"],
        "one_connection": {"ceiling": m["ceiling_1c"], "predict": m["predict_1c"]},
        "paced": {"ceiling": m["ceiling_paced"], "predict": m["predict_paced"],
                  "pause_ms": PACE_MS},
        **{k: m[k] for k in ("ready_s", "ceiling_ready_s", "pss_mb", "pss_mb_idle",
                             "ceiling_pss_mb")},
    }
    met = {
        "predict_ratio": figures["predict"]["ratio_to_ceiling"] >= TARGETS["predict_ratio"],
        "reasons_ratio": figures["reasons"]["ratio_to_ceiling"] >= TARGETS["reasons_ratio"],
        "p99_ms": max(figures["predict"]["p99_ms"], figures["reasons"]["p99_ms"])
        <= TARGETS["p99_ms"],
        "ready_s": figures["ready_s"] <= TARGETS["ready_s"],
        "pss_mb": figures["pss_mb"] <= TARGETS["pss_mb"],
        "batch_ms": figures["batch_1000"]["server_p50_ms"] <= TARGETS["batch_ms"],
    }
    return {
        "command": "gunicorn -c gunicorn.conf.py 'app:create_app()' (WEB_CONCURRENCY=2)",
        "load": f"wrk -t2 -c8 -d{args.duration}s --latency, best of {args.rounds} "
                "interleaved rounds",
        "model": {"name": card["name"], "version": card["version"],
                  "family": card.get("model", {}).get("family")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "figures": figures, "rounds": m["rounds"], "targets": TARGETS, "met": met,
    }


def print_table(report: dict) -> None:
    """The figures as a fixed-width table."""
    f = report["figures"]
    rows = [("scenario", "req/s", "vs ceiling", "p50 ms", "p99 ms", "CPU us/req")]
    for key, label in (("ceiling", "a. bare Flask (ceiling)"),
                       ("predict", "b. /predict?reasons=false"),
                       ("reasons", "c. /predict with reasons")):
        s = f[key]
        rows.append((label, f"{s['requests_per_s']:.0f}",
                     f"{s.get('ratio_to_ceiling', 1.0):.0%}", f"{s['p50_ms']:.2f}",
                     f"{s['p99_ms']:.2f}", f"{f['cpu_us_per_request'][key]:.0f}"))
    b = f["batch_1000"]
    rows.append(("e. batch of 1,000 (server)", f"{b['records_per_s']:.0f} rec/s", "",
                 f"{b['server_p50_ms']:.1f}", f"{b['server_p99_ms']:.1f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    one = f["one_connection"]
    print("\none connection, no queueing: " + ", ".join(
        f"{label} p50 {one[key]['p50_ms']:.2f} ms, p99 {one[key]['p99_ms']:.2f} ms"
        for key, label in (("ceiling", "a."), ("predict", "b."))))
    paced = f["paced"]
    print(f"paced, 8 connections pausing {paced['pause_ms']} ms: " + ", ".join(
        f"{label} {paced[key]['requests_per_s']:.0f} req/s, p50 {paced[key]['p50_ms']:.2f} ms, "
        f"p99 {paced[key]['p99_ms']:.2f} ms" for key, label in (("ceiling", "a."),
                                                                ("predict", "b."))))
    print("CPU ratio to the ceiling (ceiling's CPU per request / the API's): " + ", ".join(
        f"{k} {v:.0%}" for k, v in f["cpu_ratio_to_ceiling"].items()))
    print(f"ready after start: {f['ready_s']:.2f} s (ceiling app {f['ceiling_ready_s']:.2f} s)")
    print(f"PSS master + 2 workers: {f['pss_mb']:.0f} MB after load "
          f"({f['pss_mb_idle']:.0f} MB idle; ceiling app {f['ceiling_pss_mb']:.0f} MB)")
    machine = report["machine"]
    print(f"machine: {machine['cpus']} CPUs, load average {machine['loadavg_before'][0]} before, "
          f"{machine['loadavg_after'][0]} after; model {report['model']['family']}; "
          f"{report['load']}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                  for k, v in report["met"].items()))


if __name__ == "__main__":
    sys.exit(main())
