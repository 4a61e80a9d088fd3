"""Request-path cost of storing predictions: the insert in the request, the spool append
(what a request pays by default), with and without fsync, and the writer's cost per row,
on an SQLite file (or ``--url``).

Per request, for 1 and 1,000 applicants (real German Credit rows, 20 fields):

  a. ``PredictionStore.save`` (``STORE_WRITE=sync``): the idempotent INSERT in the request
  b. ``PredictionStore.enqueue`` (``STORE_WRITE=async``, the default): one spool line
  c. the same with ``STORE_SPOOL_FSYNC=true`` (a disk flush per request)
  d. the writer's insert of spooled lines, per row, for 100 single-applicant requests and
     for one 1,000-applicant request (paid by the writer thread, not by a request)

Rounds are interleaved and the best is reported (shared machines).

Usage: ``python benchmarks/bench_store.py [--url sqlite:///...] [--rounds 5]``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml.monitoring.store import PredictionStore, line_of  # noqa: E402
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC  # noqa: E402
from ml.training.data import load_dataset  # noqa: E402
from ml.spec.schema import DatasetSpec  # noqa: E402
from ml.training.train import record_from_row  # noqa: E402


def applicants(n: int) -> list[dict[str, Any]]:
    """``n`` real applicants as validated API records (cycling over the data set)."""
    spec = DatasetSpec.load(DEFAULT_SPEC)
    rows = [record_from_row(row, spec) for _, row in load_dataset(DEFAULT_DATA, spec).X.iterrows()]
    return [rows[i % len(rows)] for i in range(n)]


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls."""
    started = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - started) / number


def measure(url: str, rounds: int) -> dict[str, dict[int, float]]:
    """Best-of-``rounds`` microseconds per request (a-c) and per row (d)."""
    pool = applicants(1000)
    result = {"probability_of_default": 0.31, "decision": "decline"}
    spool = tempfile.mkdtemp(prefix="bench-spool-")
    store = PredictionStore(url, flush_seconds=3600, spool_dir=spool)
    synced = PredictionStore(url, flush_seconds=3600, spool_dir=spool + "-fsync", fsync=True)
    ids = itertools.count()
    store.save("warm-up", pool[:1], [result], "m", "v", False)
    best: dict[str, dict[int, float]] = {}
    for _ in range(rounds):
        for n, number, spooled in ((1, 300, 2000), (1000, 5, 50)):
            records, results, batch = pool[:n], [result] * n, n > 1
            figures = {
                "a. save() (sync, in the request)": per_call(lambda: store.save(
                    "a", records, results, "m", "v", batch, prediction_id=f"a{next(ids)}"),
                    number),
                "b. enqueue() (spool, in the request)": per_call(lambda: store.enqueue(
                    "b", records, results, "m", "v", batch, prediction_id=f"b{next(ids)}"),
                    spooled),
                "c. enqueue() with fsync": per_call(lambda: synced.enqueue(
                    "c", records, results, "m", "v", batch, prediction_id=f"c{next(ids)}"),
                    number),
            }
            store.flush(600)
            synced.flush(600)
            for name, seconds in figures.items():
                entry = best.setdefault(name, {})
                entry[n] = min(entry.get(n, float("inf")), seconds * 1e6)
        now = datetime.now(timezone.utc)
        for label, size, count in (("d. writer, per row: 100 requests of 1", 1, 100),
                                   ("d. writer, per row: 1 request of 1,000", 1000, 1)):
            def lines() -> list[list[Any]]:
                return [line_of(f"d{next(ids)}", "d", size > 1, now, "m", "v", None,
                                pool[:size], [result] * size) for _ in range(count)]
            groups = [json.loads(json.dumps(lines())) for _ in range(5)]  # as read back
            started = time.perf_counter()
            for group in groups:
                store._write_lines(group)
            seconds = (time.perf_counter() - started) / (5 * size * count)
            entry = best.setdefault(label, {})
            entry[size * count] = min(entry.get(size * count, float("inf")), seconds * 1e6)
    store.dispose()
    synced.dispose()
    return best


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='bench-store-')}/p.db"
    best = measure(url, args.rounds)
    print(f"backend {PredictionStore(url).backend}, load average "
          f"{os.getloadavg()[0]:.2f}; best of {args.rounds} rounds")
    for name, figures in best.items():
        cells = ", ".join(f"{n:,} rows: {us:,.1f} µs" for n, us in figures.items())
        print(f"{name:42s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
