"""The prediction store: every /predict result, and the outcomes fed back later.

SQLAlchemy Core over one table, ``predictions``: one row per applicant (a batch gives
one row per applicant, with its ``item`` index), holding the request id, time, model,
features (JSON), PD and decision, and later the observed ``outcome``. The URL comes from
``DATABASE_URL``: an SQLite file by default (embedded, survives restarts of the
process), PostgreSQL in production (``postgresql+psycopg://...``).

Write design: synchronous, in the request path, one ``executemany`` per request (one
round trip, one transaction). A background queue would hide the write latency but loses
what is queued when a pod is killed, and needs a thread per forked worker; an insert
of even a full batch is a few milliseconds. An outage must not stop predictions: every
database error is caught, counted (``credit_api_store_errors_total``) and marked on
the request's JSON log line (``stored: false``), which stays the audit trail. After a
failure the store is not tried again for ``STORE_RETRY_SECONDS``, so an unreachable
server costs one connect timeout, not one per request.

Processes: gunicorn preloads the app in the master and forks workers. Engines (and
their connection pools) are created lazily, on first use, per process; a process that
finds an engine made by its parent discards it without closing the parent's sockets.
Tables are created on first use (``metadata.create_all``). This module has no Flask
dependency except :func:`init_app`, so the ``python -m ml`` jobs reuse it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

EXTENSION = "prediction_store"
# Short, so an unreachable PostgreSQL fails fast (and /ready answers within its probe).
CONNECT_TIMEOUT_SECONDS = 2

# Module-level: prometheus_client registers a name once per process.
STORE_ERRORS = Counter("credit_api_store_errors", "Prediction-store operations that failed "
                       "(the prediction itself was still answered).", ["operation"])

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("item", sa.Integer, nullable=False, default=0),
    sa.Column("batch", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("probability_of_default", sa.Float, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=True),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
    # Not unique: a client may reuse its X-Request-ID, and every prediction is kept;
    # feedback labels the newest prediction with that id and index.
    sa.Index("ix_predictions_request_item", "request_id", "item"),
    sa.Index("ix_predictions_created_at", "created_at"),
)


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or written; the message says why (no values)."""


def default_url() -> str:
    """SQLite file in the temporary directory (``/tmp`` is the pod's writable emptyDir)."""
    return "sqlite:///" + os.path.join(tempfile.gettempdir(), "predictions.db")


def make_engine(url: str) -> Engine:
    """An engine with short timeouts; SQLite gets a busy timeout for concurrent workers."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 5})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = ({"connect_timeout": CONNECT_TIMEOUT_SECONDS}
                    if parsed.get_backend_name() == "postgresql" else {})
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                            pool_timeout=CONNECT_TIMEOUT_SECONDS, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the workers write without blocking readers; NORMAL sync drops the fsync per
    commit (a committed row survives a crashed process, though not a power cut: production
    runs on PostgreSQL)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class PredictionStore:
    """One database: lazy per-process engine, tables created on first use, a breaker.

    Args:
        url: SQLAlchemy URL.
        retry_seconds: after a failure, how long to answer "unavailable" without trying.
    """

    def __init__(self, url: str, retry_seconds: float = 5.0) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self._engine: Engine | None = None
        self._pid = 0
        self._ready = False  # tables created by this process
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql``, ... (for /ready and the logs; never the URL)."""
        return sa.engine.make_url(self.url).get_backend_name()

    def engine(self) -> Engine:
        """This process's engine, created (and its tables) on first use; raises on failure."""
        if self._engine is not None and self._pid == os.getpid() and self._ready:
            return self._engine
        with self._lock:
            if self._engine is not None and self._pid != os.getpid():
                # Forked from the process that made it: drop the pool, leave the
                # parent's connections open (they are the parent's).
                self._engine.dispose(close=False)
                self._engine, self._ready = None, False
            if self._engine is None:
                self._engine, self._pid = make_engine(self.url), os.getpid()
            if not self._ready:
                metadata.create_all(self._engine)
                self._ready = True
        return self._engine

    def _guard(self) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_seconds:
            raise StoreUnavailable("the prediction store failed recently; not retrying yet")

    def _fail(self, exc: Exception) -> StoreUnavailable:
        self._failed_at = time.monotonic()
        # The class and first line only: driver messages can quote SQL parameters.
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return StoreUnavailable(reason)

    def _run(self, work: Any) -> Any:
        """Run ``work(connection)`` in a transaction; database errors as StoreUnavailable."""
        self._guard()
        try:
            with self.engine().begin() as conn:
                result = work(conn)
        except StoreUnavailable:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise self._fail(exc) from exc
        self._failed_at = None
        return result

    def status(self) -> str:
        """``ok`` when the database answers, else ``unavailable`` (fast during the backoff)."""
        try:
            self._run(lambda conn: conn.execute(sa.text("SELECT 1")))
        except StoreUnavailable:
            return "unavailable"
        return "ok"

    # ------------------------------------------------------------------ writes

    def save(self, request_id: str, records: list[dict[str, Any]],
             results: list[dict[str, Any]], model_name: str, model_version: str,
             batch: bool, now: datetime | None = None) -> int:
        """Insert one row per applicant in one statement; returns the rows written."""
        now = now or datetime.now(timezone.utc)
        rows = [{"request_id": request_id, "item": i, "batch": batch, "created_at": now,
                 "model_name": model_name, "model_version": model_version,
                 "features": json.dumps(record, separators=(",", ":")),
                 "probability_of_default": float(result["probability_of_default"]),
                 "decision": result["decision"]}
                for i, (record, result) in enumerate(zip(records, results))]
        self._run(lambda conn: conn.execute(predictions.insert(), rows))
        return len(rows)

    def label(self, request_id: str, item: int, outcome: str,
              now: datetime | None = None) -> tuple[str, dict[str, Any] | None]:
        """Record the observed outcome of one prediction (the newest with this id and index).

        Returns:
            ``("created" | "unchanged" | "conflict", row)``, or ``("unknown", None)``
            when no prediction has that id and index. A conflict leaves the row as it was.
        """
        def work(conn: sa.Connection) -> tuple[str, dict[str, Any] | None]:
            key = (predictions.c.request_id == request_id) & (predictions.c.item == item)
            row = conn.execute(sa.select(predictions).where(key).order_by(
                predictions.c.id.desc()).limit(1)).mappings().first()
            if row is None:
                return "unknown", None
            if row["outcome"] is not None:
                return ("unchanged" if row["outcome"] == outcome else "conflict"), dict(row)
            # Only an unlabelled row is updated, so two racing feedbacks cannot both win.
            this = predictions.c.id == row["id"]
            done = conn.execute(predictions.update().where(this & predictions.c.outcome.is_(None))
                                .values(outcome=outcome, labelled_at=now
                                        or datetime.now(timezone.utc)))
            if done.rowcount == 0:  # pragma: no cover - lost a race with another worker
                again = conn.execute(sa.select(predictions).where(this)).mappings().first()
                return ("unchanged" if again["outcome"] == outcome else "conflict"), dict(again)
            return "created", {**row, "outcome": outcome}
        return self._run(work)

    # ------------------------------------------------------------------ reads

    def window(self, last: int | None = None, days: float | None = None,
               labelled_only: bool = False, now: datetime | None = None
               ) -> list[dict[str, Any]]:
        """Stored predictions, oldest first: the ``last`` N rows, or those of the last
        ``days`` days, or all; features decoded from JSON."""
        query = sa.select(predictions)
        if labelled_only:
            query = query.where(predictions.c.outcome.is_not(None))
        if days is not None:
            since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
            query = query.where(predictions.c.created_at >= since)
        query = query.order_by(predictions.c.id.desc())
        if last is not None:
            query = query.limit(last)
        rows = self._run(lambda conn: [dict(r) for r in conn.execute(query).mappings()])
        for row in rows:
            row["features"] = json.loads(row["features"])
        rows.reverse()
        return rows

    def dispose(self) -> None:
        """Close this process's connections (tests, job ends)."""
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine, self._ready = None, False


def outcomes_frame(rows: Iterable[dict[str, Any]], spec: Any) -> tuple[Any, Any]:
    """Labelled rows back to a validated-style frame (spec feature columns) and y (1 = bad).

    Missing values become NaN like :func:`ml.data.validate_frame` makes them; the
    target is 1 where the outcome is the spec's positive class.
    """
    import numpy as np
    import pandas as pd

    rows = [r for r in rows if r.get("outcome") is not None]
    columns = {}
    for f in spec.features:
        values = [r["features"].get(f.name) for r in rows]
        if f.kind == "categorical":
            columns[f.name] = pd.Series([np.nan if v is None else v for v in values],
                                        dtype=object)
        else:
            columns[f.name] = pd.Series([np.nan if v is None else v for v in values],
                                        dtype=float)
    y = np.array([1 if r["outcome"] == spec.target.positive else 0 for r in rows],
                 dtype=np.int64)
    return pd.DataFrame(columns), y


# --------------------------------------------------------------------------- Flask


def get_store() -> PredictionStore:
    """The current app's store."""
    from flask import current_app

    return current_app.extensions[EXTENSION]


def save_predictions(app: Any, request_id: str, records: list[dict[str, Any]],
                     results: list[dict[str, Any]], model_name: str, model_version: str,
                     batch: bool, **_: Any) -> None:
    """``prediction_made`` receiver: store the rows; on failure count it and carry on."""
    from app import logs

    store: PredictionStore = app.extensions[EXTENSION]
    try:
        store.save(request_id, records, results, model_name, model_version, batch)
    except StoreUnavailable as exc:
        STORE_ERRORS.labels("write").inc()
        logs.annotate(stored=False)
        log.warning("prediction not stored", extra={"reason": str(exc),
                                                    "backend": store.backend})
        return
    logs.annotate(stored=True)


def readiness() -> str:
    """The store's state for ``GET /ready``: it informs, it never fails readiness."""
    return get_store().status()


def init_app(app: Any) -> None:
    """Open (lazily) the store named by ``DATABASE_URL`` and save every prediction."""
    from app import services

    url = app.config.get("DATABASE_URL") or default_url()
    store = PredictionStore(url, float(app.config.get("STORE_RETRY_SECONDS", 5)))
    app.extensions[EXTENSION] = store
    app.extensions.setdefault("readiness", {})["store"] = readiness
    services.prediction_made.connect(save_predictions, app, weak=False)
