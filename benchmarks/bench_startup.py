"""Start-up, whole process: gunicorn until ``/ready`` answers 200, and ``python -m ml score``
on 10 rows, for one or more source trees side by side (interleaved, same run).

Issue 18's targets: both at most 1.5 s. Compare a tree before a change with one after:

    python benchmarks/bench_startup.py --tree before=/path/to/old/checkout:/old/models \\
        --tree after=.:models --repeat 5

Each tree runs with ``PYTHONPATH`` set to its root, so its own ``ml`` and ``app`` load;
the environment (``MODEL_TRUSTED_KEYS``) is passed through unchanged.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ml.spec.config import DEFAULT_DATA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), **extra}


def time_ready(root: Path, models: Path, timeout: float = 60.0) -> float:
    """Seconds from launching gunicorn until ``GET /ready`` is 200."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=root, env=env_for(root, PORT=str(port), MODEL_DIR=str(models), LOG_LEVEL="WARNING"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{root}: /ready not 200 after {timeout} s")
    finally:
        server.terminate()
        server.wait(30)


def time_score(root: Path, models: Path, portfolio: Path, out: Path) -> float:
    """Seconds of the whole ``python -m ml score`` process on ``portfolio``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ml", "-q", "score", "--model", str(models),
                    "--no-progress", str(portfolio), str(out)], cwd=root, env=env_for(root),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", required=True,
                        help="NAME=ROOT:MODELS (a source tree and a models dir it can load)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args(argv)
    trees = {}
    for item in args.tree:
        name, _, paths = item.partition("=")
        root, _, models = paths.partition(":")
        trees[name] = (Path(root).resolve(), Path(models).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        portfolio = Path(tmp) / "portfolio.csv"
        lines = DEFAULT_DATA.read_text(encoding="utf-8").splitlines(keepends=True)
        portfolio.write_text("".join(lines[:args.rows + 1]), encoding="utf-8")
        times: dict[str, dict[str, list[float]]] = {n: {"ready": [], "score": []} for n in trees}
        for _ in range(args.repeat):  # interleaved: every tree in every round
            for name, (root, models) in trees.items():
                times[name]["ready"].append(time_ready(root, models))
                times[name]["score"].append(time_score(root, models, portfolio,
                                                       Path(tmp) / f"{name}.csv"))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; {args.repeat} interleaved rounds; median (min) seconds")
    for name, t in times.items():
        print(f"  {name:>10}: /ready after start {statistics.median(t['ready']):.2f} "
              f"({min(t['ready']):.2f}) | ml score {args.rows} rows "
              f"{statistics.median(t['score']):.2f} ({min(t['score']):.2f})")


if __name__ == "__main__":
    main()
