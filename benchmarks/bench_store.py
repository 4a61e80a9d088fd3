"""Request-path cost of storing predictions: the old synchronous insert, the new one, and
the write-behind queue, on an SQLite file (or ``--url``).

Per request, for 1 and 1,000 applicants (real German Credit rows, 20 fields):

  a. before: ``conn.execute(predictions.insert(), dicts)`` with ``json.dumps`` per row,
     one transaction per request (what ``PredictionStore.save`` did before write-behind)
  b. ``PredictionStore.save`` now (``STORE_WRITE=sync``): precompiled INSERT, rows as
     tuples through the driver's ``executemany``
  c. ``PredictionStore.enqueue`` (``STORE_WRITE=async``): what the request pays
  d. the writer's group commit, per row, for 100 single-applicant requests and for one
     1,000-applicant request (paid by the writer thread, not by a request)

Rounds are interleaved and the best is reported (shared machines).

Usage: ``python benchmarks/bench_store.py [--url sqlite:///...] [--rounds 5]``.
"""
from __future__ import annotations

import argparse
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

from ml.monitoring.store import PredictionStore, predictions  # noqa: E402
from ml.spec.config import DEFAULT_DATA, DEFAULT_SPEC  # noqa: E402
from ml.training.data import load_dataset  # noqa: E402
from ml.spec.schema import DatasetSpec  # noqa: E402
from ml.training.train import record_from_row  # noqa: E402


def applicants(n: int) -> list[dict[str, Any]]:
    """``n`` real applicants as validated API records (cycling over the data set)."""
    spec = DatasetSpec.load(DEFAULT_SPEC)
    rows = [record_from_row(row, spec) for _, row in load_dataset(DEFAULT_DATA, spec).X.iterrows()]
    return [rows[i % len(rows)] for i in range(n)]


def old_save(store: PredictionStore, request_id: str, records: list[dict[str, Any]],
             results: list[dict[str, Any]], batch: bool) -> None:
    """The synchronous insert as it was before write-behind (SQLAlchemy Core, dicts)."""
    now = datetime.now(timezone.utc)
    rows = [{"request_id": request_id, "item": i, "batch": batch, "created_at": now,
             "model_name": "m", "model_version": "v",
             "features": json.dumps(record, separators=(",", ":")),
             "probability_of_default": float(result["probability_of_default"]),
             "decision": result["decision"]}
            for i, (record, result) in enumerate(zip(records, results))]
    with store.engine().begin() as conn:
        conn.execute(predictions.insert(), rows)


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
    store = PredictionStore(url, flush_seconds=3600, queue_rows=10**8, batch_rows=10**8)
    store.save("warm-up", pool[:1], [result], "m", "v", False)
    best: dict[str, dict[int, float]] = {}
    for _ in range(rounds):
        for n, number, queued in ((1, 500, 2000), (1000, 5, 50)):
            records, results, batch = pool[:n], [result] * n, n > 1
            figures = {
                "a. before: Core insert of dicts": per_call(
                    lambda: old_save(store, "a", records, results, batch), number),
                "b. save() now (sync)": per_call(
                    lambda: store.save("b", records, results, "m", "v", batch), number),
                "c. enqueue() (async, in the request)": per_call(
                    lambda: store.enqueue("c", records, results, "m", "v", batch), queued),
            }
            store.flush(600)
            for name, seconds in figures.items():
                entry = best.setdefault(name, {})
                entry[n] = min(entry.get(n, float("inf")), seconds * 1e6)
        now = datetime.now(timezone.utc)
        for label, group in (("d. writer, per row: 100 requests of 1", [
                ("d", pool[i:i + 1], [result], "m", "v", False, now) for i in range(100)]),
                ("d. writer, per row: 1 request of 1,000", [
                    ("d", pool, [result] * 1000, "m", "v", True, now)])):
            rows = sum(len(p[1]) for p in group)
            seconds = per_call(lambda: store._write_pending(group), 5) / rows
            entry = best.setdefault(label, {})
            entry[rows] = min(entry.get(rows, float("inf")), seconds * 1e6)
    store.dispose()
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
