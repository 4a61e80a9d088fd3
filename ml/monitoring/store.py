"""The prediction store: every /predict result, and the outcomes fed back later.

SQLAlchemy Core over one table, ``predictions``: one row per applicant (a batch gives
one row per applicant, with its ``item`` index), holding the request id, time, model,
features (JSON), PD and decision, and later the observed ``outcome``. The URL comes from
``DATABASE_URL``: an SQLite file by default (embedded, survives restarts of the
process), PostgreSQL in production (``postgresql+psycopg://...``).

Write design (``STORE_WRITE``; the figures are in ``docs/design.md``). An insert in the
request was the largest share of a single-record /predict, so writes are
**write-behind** (``async``, the default): the request appends its rows, as they are,
to a bounded per-process queue (:meth:`PredictionStore.enqueue`, independent of the
batch size) and a daemon writer thread writes everything pending in one transaction
and one ``executemany`` (group commit), at most ``STORE_FLUSH_SECONDS`` (0.2 s) after
the first row arrived, sooner when :data:`BATCH_ROWS` rows are pending. The JSON
encoding of the features happens in the writer too, and a grouped row costs the
writer a small fraction of what an insert of its own cost the request.

Durability contract of ``async``: a prediction is answered before its row is committed.
Rows are lost only when a worker dies without a graceful stop (SIGKILL, OOM kill,
gunicorn's timeout kill): what that worker had queued, normally its last
``STORE_FLUSH_SECONDS`` of predictions (more only while the database is slow, at most
``STORE_QUEUE_ROWS``). A graceful stop loses nothing: gunicorn runs ``worker_exit``
(``gunicorn.conf.py``) and the interpreter runs ``atexit``, both of which call
:func:`flush_all`. Reads in this process (feedback, monitoring) flush first, so they see
every prediction this process answered; other processes (the other workers, the
monitor job) see a row up to ``STORE_FLUSH_SECONDS`` later, so a feedback sent within
that time and answered by another worker can get a 404 (outcomes normally come weeks
later; a retry finds the row). The writer thread shares the worker's CPU and GIL: its
work is done between requests, or interleaved with them under load.
Production runs on PostgreSQL; SQLite in the pod is for development.
``STORE_WRITE=sync`` keeps the insert in the request for users who need the row
committed before the answer; it too is lean: the INSERT is compiled once per engine
and the rows go to the driver's ``executemany`` as tuples, with the request's constant
values converted once.

An outage must not stop predictions: every database error is caught and counted
(``credit_api_store_errors_total{operation="write"}``); the request's JSON log line
stays the audit trail and says what became of its rows: ``stored: true | false``
(sync), ``stored: "queued" | "dropped"`` (async). In async mode a failed group write
is logged once (WARNING ``predictions not stored``, with the row count and the request
ids, never feature values), and a full queue (database slow or down) drops the
request's rows instead of blocking it; lost rows are counted in
``credit_api_store_dropped_rows_total{reason}``. After a failure the store is not tried
again for ``STORE_RETRY_SECONDS`` (requests meanwhile are ``dropped``/``false`` at
once), so an unreachable server costs one connect timeout, not one per request.

Processes: gunicorn preloads the app in the master and forks workers. Engines (and
their connection pools) and the writer thread are created lazily, on first use, per
process; a process that finds an engine made by its parent discards it without closing
the parent's sockets, and a forked child starts with an empty queue (its parent's
pending rows are the parent's to write). Tables are created on first use
(``metadata.create_all``).

This module is runtime code with no Flask in it: the API's :mod:`app.store` wires it to
requests, and the ``python -m ml monitor`` and ``retrain`` jobs read the same table.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

# Short, so an unreachable PostgreSQL fails fast (and /ready answers within its probe).
CONNECT_TIMEOUT_SECONDS = 2
WRITE_MODES = ("async", "sync")
# The writer does not wait for the flush interval once this many rows are pending.
BATCH_ROWS = 1000
# How long a read (feedback, monitoring) or a graceful exit waits for pending rows.
FLUSH_TIMEOUT_SECONDS = 10.0
# The writer thread's nice value (Linux: per thread). Its group commits then yield the
# CPU to the request threads of the busy workers, which cuts the tail of /predict
# latency, and it still gets several times the CPU it needs at full load, so it keeps
# up and drops nothing (figures: docs/design.md).
WRITER_NICE = 10
# A writer thread idle this long ends (the next enqueue starts another), so stores that
# are no longer used (tests build many apps) do not keep a thread each.
WRITER_IDLE_SECONDS = 60.0

# Module-level: prometheus_client registers a name once per process.
STORE_ERRORS = Counter("credit_api_store_errors", "Prediction-store operations that failed "
                       "(the prediction itself was still answered).", ["operation"])
DROPPED_ROWS = Counter("credit_api_store_dropped_rows", "Predictions answered but never "
                       "stored, by reason (queue_full, write_failed, unavailable).",
                       ["reason"])

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
    # Who made the prediction and who recorded its outcome (``key:NAME``, ``oidc:SUB``);
    # the server-issued id feedback addresses. ``request_id`` is the client's correlation
    # id, kept for tracing, never a key. Nullable: rows written before they existed.
    sa.Column("prediction_id", sa.String(64), nullable=True),
    sa.Column("client", sa.String(255), nullable=True),
    sa.Column("labelled_by", sa.String(255), nullable=True),
    sa.Index("ix_predictions_prediction_item", "prediction_id", "item"),
    sa.Index("ix_predictions_created_at", "created_at"),
)
# Every change of a recorded outcome, with who made it and why (the audit trail).
corrections = sa.Table(
    "outcome_corrections", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("prediction_row", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
              nullable=False),
    sa.Column("previous_outcome", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("corrected_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("corrected_at", sa.DateTime(timezone=True), nullable=False),
)
# Columns added after the first release, created on an older table by _create_tables.
_ADDED_COLUMNS = ("prediction_id", "client", "labelled_by")
# The columns a prediction writes, in table order; the first five and the time are the
# same for every row of a request.
INSERT_COLUMNS = ("request_id", "item", "batch", "created_at", "model_name",
                  "model_version", "features", "probability_of_default", "decision",
                  "prediction_id", "client")
# One encoder object: json.dumps(..., separators=...) builds a new one per call.
_encode_features = json.JSONEncoder(separators=(",", ":")).encode

# What a request leaves for the writer: (request_id, records, results, model_name,
# model_version, batch, created_at, prediction_id, client). The records and results are the
# request's own objects, not copies: nothing changes them once the prediction is answered.
Pending = tuple


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


def _create_tables(engine: Engine) -> None:
    """``create_all``, tolerating another process (or store) creating the same table at
    the same moment: its check-then-create is not atomic, and two workers, or the writer
    thread and a job, meet there on a fresh database."""
    try:
        metadata.create_all(engine)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
        metadata.create_all(engine)  # the other one won; this time the check sees it
    _add_identity_columns(engine)


def _add_identity_columns(engine: Engine) -> None:
    """Give a table made before the identity columns existed those (nullable) columns
    and their index; old rows keep NULL there (no owner: only ``feedback:all`` sees them)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    missing = [name for name in _ADDED_COLUMNS if name not in present]
    if not missing:
        return
    with engine.begin() as conn:
        for name in missing:
            column = predictions.c[name]
            kind = column.type.compile(dialect=engine.dialect)
            conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
    for index in predictions.indexes:
        index.create(engine, checkfirst=True)


def _reason(exc: Exception) -> str:
    """The class and first line only: driver messages can quote SQL parameters."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _in_memory(url: str) -> bool:
    parsed = sa.engine.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


class InsertPlan:
    """The prediction INSERT compiled once for a dialect, run through the driver's
    ``executemany`` with rows built as plain tuples.

    ``conn.execute(predictions.insert(), dicts)`` spent more time processing parameters
    (per row: the datetime and bool conversions, a dict per row) than SQLite spent
    inserting. Here the per-request values are converted once per request, and the
    statement's SQL is compiled once per engine.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        compiled = predictions.insert().compile(dialect=dialect,
                                                column_keys=list(INSERT_COLUMNS),
                                                for_executemany=True)
        self.sql = compiled.string
        self.names: tuple[str, ...] | None = None
        if compiled.positional:
            if tuple(compiled.positiontup or ()) != INSERT_COLUMNS:  # pragma: no cover
                raise RuntimeError("unexpected parameter order in the compiled INSERT")
        else:
            self.names = INSERT_COLUMNS  # named paramstyle (psycopg): one dict per row
        self.dialect = dialect
        self.convert = {name: predictions.c[name].type.dialect_impl(dialect)
                        .bind_processor(dialect) for name in INSERT_COLUMNS}
        # Per row, only the PD is converted (to float, which is all any dialect does
        # here); the other per-row values are ints and strings every driver takes.
        if any(self.convert[name] for name in ("item", "features", "decision")):
            raise RuntimeError(f"{dialect.name}: unexpected conversion of a per-row value")

    def _once(self, name: str, value: Any) -> Any:
        """A value the same for all rows of a request, converted for the driver once."""
        convert = self.convert[name]
        return value if convert is None else convert(value)

    def rows(self, pending: Iterable[Pending]) -> list[Any]:
        """Driver parameters, one per applicant, for requests' ``pending`` rows."""
        once, out = self._once, []
        for request_id, records, results, name, version, batch, now, pid, client in pending:
            rid, flag, created = (once("request_id", request_id), once("batch", batch),
                                  once("created_at", now))
            name, version = once("model_name", name), once("model_version", version)
            pid, client = once("prediction_id", pid), once("client", client)
            out.extend((rid, i, flag, created, name, version, _encode_features(record),
                        float(result["probability_of_default"]), result["decision"],
                        pid, client)
                       for i, (record, result) in enumerate(zip(records, results)))
        if self.names is not None:
            names = self.names
            out = [dict(zip(names, row)) for row in out]
        return out

    def execute(self, conn: sa.Connection, pending: Iterable[Pending]) -> int:
        """Insert the rows in one ``executemany``; returns how many."""
        rows = self.rows(pending)
        if rows:
            conn.exec_driver_sql(self.sql, rows)
        return len(rows)


class WriteQueue:
    """A bounded queue of pending rows and the daemon thread that writes them in groups.

    One per process (a forked child makes its own): the thread is started by the first
    :meth:`put` and ends after :data:`WRITER_IDLE_SECONDS` without work.

    Args:
        write: called by the writer thread with a list of :data:`Pending` requests; it
            writes them in one transaction and handles (counts, logs) its own failures.
        flush_seconds: longest wait between the first pending row and its write.
        max_rows: rows the queue holds at most; beyond it :meth:`put` refuses.
        batch_rows: this many pending rows are written without waiting.
    """

    def __init__(self, write: Callable[[list[Pending]], None], flush_seconds: float,
                 max_rows: int, batch_rows: int = BATCH_ROWS) -> None:
        self.write, self.flush_seconds = write, flush_seconds
        self.max_rows, self.batch_rows = max_rows, batch_rows
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits on this
        self._drained = threading.Condition(self._lock)  # flush() waits on this
        self._pending: deque[Pending] = deque()
        self._rows = 0
        self._queued = self._written = 0  # requests put / written (or failed) so far
        self._hurry = False  # a flush is waiting: write without the interval
        self._thread: threading.Thread | None = None

    def put(self, pending: Pending, rows: int) -> bool:
        """Queue one request's rows; False (nothing queued) when they do not fit."""
        with self._lock:
            if self._rows + rows > self.max_rows:
                return False
            self._pending.append(pending)
            self._rows += rows
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="prediction-store-writer")
                self._thread.start()
            elif len(self._pending) == 1 or self._rows >= self.batch_rows:
                self._wake.notify()
        return True

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every request queued so far is written (or has failed).

        Returns:
            False when ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._queued
            if self._written >= target:
                return True
            self._hurry = True
            self._wake.notify()
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return False
                self._drained.wait(remaining)
        return True

    def _take(self) -> list[Pending] | None:
        """Wait for work, then for the interval (or enough rows, or a flush); take it all.
        None when idle for :data:`WRITER_IDLE_SECONDS`: the thread then ends."""
        with self._lock:
            while not self._pending:
                if not self._wake.wait(WRITER_IDLE_SECONDS) and not self._pending:
                    self._thread = None
                    return None
            deadline = time.monotonic() + self.flush_seconds
            while not self._hurry and self._rows < self.batch_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            taken = list(self._pending)
            self._pending.clear()
            self._rows, self._hurry = 0, False
            return taken

    def _run(self) -> None:
        _lower_priority()
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self.write(taken)
            except Exception:  # pragma: no cover - write() handles its own failures
                log.exception("prediction-store writer failed")
            finally:
                with self._lock:
                    self._written += len(taken)
                    self._drained.notify_all()


def _lower_priority() -> None:
    """Give the calling thread (the writer) :data:`WRITER_NICE` on Linux, where each thread
    has its own nice value; elsewhere, or if refused, it keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid),
                                                 WRITER_NICE))
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or not allowed
        pass


_STORES: "weakref.WeakSet[PredictionStore]" = weakref.WeakSet()


class PredictionStore:
    """One database: lazy per-process engine, tables created on first use, a breaker,
    and a write-behind queue.

    Args:
        url: SQLAlchemy URL.
        retry_seconds: after a failure, how long to answer "unavailable" without trying.
        write: ``async`` (write-behind, :meth:`enqueue`) or ``sync`` (:meth:`save` in the
            request); only :func:`save_predictions` looks at it. An in-memory SQLite
            database is always ``sync``: each thread would see its own database.
        flush_seconds: longest wait of a queued row before the writer writes it.
        queue_rows: most rows waiting in this process's queue.
        batch_rows: this many queued rows are written without waiting.
    """

    def __init__(self, url: str, retry_seconds: float = 5.0, write: str = "async",
                 flush_seconds: float = 0.2, queue_rows: int = 10_000,
                 batch_rows: int = BATCH_ROWS) -> None:
        if write not in WRITE_MODES:
            raise ValueError(f"write must be one of {WRITE_MODES}, got {write!r}")
        self.url = url
        self.retry_seconds = retry_seconds
        self.write = "sync" if _in_memory(url) else write
        self.flush_seconds, self.queue_rows = flush_seconds, queue_rows
        self.batch_rows = batch_rows
        self._engine: Engine | None = None
        self._pid = 0
        self._ready = False  # tables created by this process
        self._failed_at: float | None = None
        self._plan: InsertPlan | None = None
        self._lock = threading.Lock()
        self._queue = WriteQueue(self._write_pending, flush_seconds, queue_rows,
                                 batch_rows)
        _STORES.add(self)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks and an empty queue (the parent writes its own
        pending rows; a lock may have been held by a thread that does not exist here)."""
        self._lock = threading.Lock()
        self._queue = WriteQueue(self._write_pending, self.flush_seconds, self.queue_rows,
                                 self.batch_rows)

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
                _create_tables(self._engine)
                self._ready = True
        return self._engine

    def _guard(self) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_seconds:
            raise StoreUnavailable("the prediction store failed recently; not retrying yet")

    def _fail(self, exc: Exception) -> StoreUnavailable:
        self._failed_at = time.monotonic()
        return StoreUnavailable(_reason(exc))

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

    def _insert(self, conn: sa.Connection, pending: list[Pending]) -> int:
        plan = self._plan
        if plan is None or plan.dialect is not conn.dialect:
            plan = self._plan = InsertPlan(conn.dialect)
        return plan.execute(conn, pending)

    def save(self, request_id: str, records: list[dict[str, Any]],
             results: list[dict[str, Any]], model_name: str, model_version: str,
             batch: bool, now: datetime | None = None, prediction_id: str | None = None,
             client: str | None = None) -> int:
        """Insert one row per applicant now, in one statement; returns the rows written.

        ``prediction_id`` (the key feedback uses; the API issues one per request)
        defaults to ``request_id`` for jobs and tests; ``client`` is who asked.

        Raises:
            StoreUnavailable: the database failed (or failed recently).
        """
        pending = (request_id, records, results, model_name, model_version, batch,
                   now or datetime.now(timezone.utc), prediction_id or request_id, client)
        return self._run(lambda conn: self._insert(conn, [pending]))

    def enqueue(self, request_id: str, records: list[dict[str, Any]],
                results: list[dict[str, Any]], model_name: str, model_version: str,
                batch: bool, now: datetime | None = None, prediction_id: str | None = None,
                client: str | None = None) -> bool:
        """Hand one request's rows to this process's writer thread and return at once.

        ``records`` and ``results`` are kept as they are until written: the caller must
        not change them afterwards. Returns False, with nothing queued, when the queue is
        full (the rows are counted as dropped).

        Raises:
            StoreUnavailable: the database failed recently (the breaker is open).
        """
        self._guard()
        if self._queue.pid != os.getpid():  # forked without os.fork's hooks
            self._after_fork()
        pending = (request_id, records, results, model_name, model_version, batch,
                   now or datetime.now(timezone.utc), prediction_id or request_id, client)
        if self._queue.put(pending, len(records)):
            return True
        STORE_ERRORS.labels("write").inc()
        DROPPED_ROWS.labels("queue_full").inc(len(records))
        return False

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every row this process queued so far is written (or has failed).

        Returns:
            False when ``timeout`` seconds passed first (the rows stay queued).
        """
        if self._queue.pid != os.getpid():
            return True  # nothing of this process's is queued
        return self._queue.flush(timeout)

    def _write_pending(self, pending: list[Pending]) -> None:
        """The writer's group commit: all pending requests, one transaction. A failure
        is counted and logged once, with the request ids (never feature values)."""
        try:
            self._run(lambda conn: self._insert(conn, pending))
        except Exception as exc:  # StoreUnavailable, or a row that cannot be encoded
            rows = sum(len(p[1]) for p in pending)
            reason = str(exc) if isinstance(exc, StoreUnavailable) else _reason(exc)
            STORE_ERRORS.labels("write").inc()
            DROPPED_ROWS.labels("write_failed").inc(rows)
            log.warning("predictions not stored", extra={
                "reason": reason, "backend": self.backend, "rows": rows,
                "request_ids": list(dict.fromkeys(p[0] for p in pending))})

    def label(self, prediction_id: str, item: int, outcome: str, *, by: str | None = None,
              owner: str | None = None, correction: str | None = None,
              now: datetime | None = None) -> tuple[str, dict[str, Any] | None]:
        """Record the observed outcome of one prediction (the newest with this id and index).

        Pending rows of this process are written first, so feedback right after its
        prediction finds it.

        Args:
            prediction_id: the server-issued id the prediction answered.
            item: the applicant's index in its batch.
            outcome: what happened.
            by: who records it (stored as ``labelled_by``).
            owner: when given, only a prediction made by this client is seen; another's
                is ``unknown``, exactly as a missing one (its existence is not revealed).
            correction: a reason: an outcome already recorded is changed, and the change
                (previous and new outcome, who, why, when) goes to ``outcome_corrections``.

        Returns:
            ``("created" | "unchanged" | "conflict" | "corrected", row)``, or
            ``("unknown", None)``. A conflict leaves the row as it was.
        """
        self.flush()
        when = now or datetime.now(timezone.utc)

        def work(conn: sa.Connection) -> tuple[str, dict[str, Any] | None]:
            key = (predictions.c.prediction_id == prediction_id) & (predictions.c.item == item)
            row = conn.execute(sa.select(predictions).where(key).order_by(
                predictions.c.id.desc()).limit(1)).mappings().first()
            if row is None or (owner is not None and row["client"] != owner):
                return "unknown", None
            this = predictions.c.id == row["id"]
            if row["outcome"] is not None:
                if row["outcome"] == outcome:
                    return "unchanged", dict(row)
                if correction is None:
                    return "conflict", dict(row)
                return _correct(conn, row, outcome, by, correction, when)
            # Only an unlabelled row is updated, so two racing feedbacks cannot both win.
            done = conn.execute(predictions.update().where(this & predictions.c.outcome.is_(None))
                                .values(outcome=outcome, labelled_at=when, labelled_by=by))
            if done.rowcount == 0:  # pragma: no cover - lost a race with another worker
                again = conn.execute(sa.select(predictions).where(this)).mappings().first()
                return ("unchanged" if again["outcome"] == outcome else "conflict"), dict(again)
            return "created", {**row, "outcome": outcome, "labelled_by": by}
        return self._run(work)

    # ------------------------------------------------------------------ reads

    def window(self, last: int | None = None, days: float | None = None,
               labelled_only: bool = False, now: datetime | None = None
               ) -> list[dict[str, Any]]:
        """Stored predictions, oldest first: the ``last`` N rows, or those of the last
        ``days`` days, or all; features decoded from JSON. Pending rows of this process
        are written first."""
        self.flush()
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
        """Write what is pending, then close this process's connections (tests, job ends)."""
        self.flush()
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine, self._ready = None, False


def _correct(conn: sa.Connection, row: Any, outcome: str, by: str | None, reason: str,
             when: datetime) -> tuple[str, dict[str, Any]]:
    """Change a recorded outcome and keep the change in ``outcome_corrections``."""
    conn.execute(corrections.insert().values(
        prediction_row=row["id"], previous_outcome=row["outcome"], outcome=outcome,
        corrected_by=by or "unknown", reason=reason, corrected_at=when))
    conn.execute(predictions.update().where(predictions.c.id == row["id"])
                 .values(outcome=outcome, labelled_at=when, labelled_by=by))
    return "corrected", {**row, "outcome": outcome, "labelled_by": by}


def flush_all(timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
    """Write what every store of this process has queued (a graceful exit calls this:
    gunicorn's ``worker_exit`` hook and ``atexit``). False if ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    done = True
    for store in list(_STORES):
        done = store.flush(max(0.0, deadline - time.monotonic())) and done
    return done


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(flush_all)
