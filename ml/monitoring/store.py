"""The prediction store: every /predict result, and the outcomes fed back later.

Tables (:mod:`ml.monitoring.schema`): ``predictions`` (one row per applicant, keyed by
the server-issued ``prediction_id`` and the applicant's ``item``), ``outcomes`` (keyed
the same way, written independently) and ``outcome_corrections``; reads join
predictions with their outcomes. The URL comes from ``DATABASE_URL``: an SQLite file by
default (``make run``, single-machine tests), PostgreSQL shared by every worker, pod and
job in production (``postgresql+psycopg://...``).

Writes (``STORE_WRITE=async``, the default): a request appends its rows to this
process's spool file (:mod:`ml.monitoring.spool`) before it is answered, and a writer
thread inserts the spooled lines in order, in one transaction per group, skipping rows
already stored. An answered prediction is therefore never lost with its process, and
waits in the spool while the database is down or slow; nothing is dropped, nothing
stored twice. ``STORE_WRITE=sync`` inserts in the request and spools only when the
insert fails. Reads in this process (feedback, monitoring) first wait for its own spool.

Feedback is an insert into ``outcomes``; it does not need the prediction row, so an
outcome sent right after its prediction is accepted whichever worker or pod answers
(a recent server-issued id not stored yet is taken as pending, and its owner checked when
the two meet). The same outcome again is ``unchanged``, a different one a ``conflict``
unless it is an explicit correction.

Every database call of a request runs under a deadline (``STORE_DEADLINE_SECONDS``):
a hung server costs the request that much, never a worker. Health checks never change
what is written. This module is runtime code with no Flask in it: :mod:`app.store` wires
it to requests; ``python -m ml monitor`` and ``retrain`` read the same tables.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ml.monitoring import spool as spooling
from ml.monitoring.schema import (InsertPlan, corrections, default_url, in_memory, line_of,
                                  make_engine,
                                  outcomes, predictions, visible_outcome)

__all__ = ["PredictionStore", "StoreUnavailable", "STORE_ERRORS", "DROPPED_ROWS",
           "default_url", "flush_all"]
log = logging.getLogger(__name__)

WRITE_MODES = ("async", "sync")
# How long a read (feedback, monitoring) or a graceful exit waits for the own spool.
FLUSH_TIMEOUT_SECONDS = 10.0
# An unknown prediction_id this recent (its time prefix) may still be in a spool: its
# outcome is accepted as pending. Older unknown ids are 404.
PENDING_OUTCOME_SECONDS = 600
# Helper threads per process for the database calls of requests (each under a deadline).
READ_THREADS = 4
# /ready waits at most this long for the database (a probe's own timeout is ~1-3 s).
STATUS_SECONDS = 1.0

# Module-level: prometheus_client registers a name once per process.
STORE_ERRORS = Counter("credit_api_store_errors", "Prediction-store operations that failed "
                       "(the prediction itself was still answered).", ["operation"])
DROPPED_ROWS = Counter("credit_api_store_dropped_rows", "Predictions answered but neither "
                       "spooled nor stored (the spool's disk refused them).", ["reason"])


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or written; the message says why (no values)."""


def _reason(exc: Exception) -> str:
    """The class and first line only: driver messages can quote SQL parameters."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def spool_directory(url: str) -> str:
    """The default spool of a database: one directory per URL under the temporary
    directory (the pod's volume), so two databases never drain into each other."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "prediction-spool", digest)


def recent_server_id(prediction_id: str, now: float | None = None) -> bool:
    """Whether an id looks issued by this service (:func:`app.logs.new_request_id`: 32 hex
    digits, milliseconds first) within :data:`PENDING_OUTCOME_SECONDS`."""
    if len(prediction_id) != 32:
        return False
    try:
        issued = int(prediction_id[:12], 16) / 1000
        int(prediction_id[12:], 16)
    except ValueError:
        return False
    age = (now or time.time()) - issued
    return -60 <= age <= PENDING_OUTCOME_SECONDS


_STORES: "weakref.WeakSet[PredictionStore]" = weakref.WeakSet()


class PredictionStore:
    """One database: a lazy per-process engine, a spool and its writer, and the reads.

    Args:
        url: SQLAlchemy URL.
        retry_seconds: after a failed read or write, how long to answer "unavailable"
            without trying (reads) or to wait before writing the spool again.
        write: ``async`` (spool, then the writer) or ``sync`` (insert in the request,
            spool on failure); an in-memory SQLite database is always ``sync``.
        flush_seconds: longest wait of a spooled line before the writer takes it.
        spool_dir: where this database's spool lives (default: :func:`spool_directory`).
        fsync: flush each spooled line to the disk before answering.
        deadline_seconds: longest wait of a request for the database (the API sets
            ``STORE_DEADLINE_SECONDS``); None for jobs, which wait as long as it takes.
    """

    def __init__(self, url: str, retry_seconds: float = 5.0, write: str = "async",
                 flush_seconds: float = 0.2, spool_dir: str | None = None,
                 fsync: bool = False, deadline_seconds: float | None = None) -> None:
        if write not in WRITE_MODES:
            raise ValueError(f"write must be one of {WRITE_MODES}, got {write!r}")
        self.url = url
        self.retry_seconds, self.flush_seconds = retry_seconds, flush_seconds
        self.write = "sync" if in_memory(url) else write
        self.spool_dir = spool_dir or spool_directory(url)
        self.fsync, self.deadline_seconds = fsync, deadline_seconds
        self._pid = 0
        self._engine: Engine | None = None
        self._ready = False
        self._plan: InsertPlan | None = None
        self._drainer: spooling.Drainer | None = None
        self._failed_at: float | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        _STORES.add(self)

    # ------------------------------------------------------------------ per process

    def _process(self) -> None:
        """Forked (gunicorn preloads in the master): drop the parent's engine without
        closing its sockets, and start an own spool; the parent's is the parent's."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._engine is not None:
                self._engine.dispose(close=False)
            self._engine, self._ready, self._plan, self._drainer = None, False, None, None
            self._pool = None  # its threads were the parent's
            self._lock = threading.Lock()
            self._pid = os.getpid()

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql``, ... (for /ready and the logs; never the URL)."""
        return sa.engine.make_url(self.url).get_backend_name()

    def engine(self) -> Engine:
        """This process's engine, created on first use; raises on failure. An SQLite file
        behind the newest schema is upgraded here (:mod:`ml.monitoring.migrate`: the API
        does it in the master at start); PostgreSQL is migrated by its own command."""
        self._process()
        if self._engine is not None and self._ready:
            return self._engine
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url)
            if not self._ready:
                if self._engine.dialect.name == "sqlite":
                    from ml.monitoring.migrate import ensure_sqlite

                    ensure_sqlite(self._engine)
                self._ready = True
        return self._engine

    def prepare(self) -> None:
        """Upgrade an SQLite store now and close the connection (the API calls this in
        the gunicorn master, before the workers fork); a failure is logged, not raised:
        the workers spool until the database works."""
        if self.backend != "sqlite" or in_memory(self.url):
            return
        try:
            self.engine()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("prediction store not ready at start", extra={"reason": _reason(exc)})
        finally:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._ready = None, False

    def drainer(self) -> spooling.Drainer:
        """This process's spool writer (created on first use)."""
        self._process()
        if self._drainer is None:
            with self._lock:
                if self._drainer is None:
                    self._drainer = spooling.Drainer(
                        spooling.Spool(self.spool_dir, self.fsync), self._write_lines,
                        self.flush_seconds, min(self.retry_seconds, 1.0))
        return self._drainer

    def start(self) -> None:
        """Start the writer now (a new worker drains the spools of dead ones at once)."""
        if not in_memory(self.url):
            self.drainer().start()

    # ------------------------------------------------------------------ running SQL

    def _guard(self) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_seconds:
            raise StoreUnavailable("the prediction store failed recently; not retrying yet")

    def _run(self, work: Any, guard: bool = True) -> Any:
        """Run ``work(connection)`` in a transaction; database errors as StoreUnavailable.
        Requests pass through the breaker (``guard``), so an outage costs one timeout."""
        if guard:
            self._guard()
        try:
            with self.engine().begin() as conn:
                result = work(conn)
        except (SQLAlchemyError, OSError) as exc:
            if guard:
                self._failed_at = time.monotonic()
            raise StoreUnavailable(_reason(exc)) from exc
        if guard:
            self._failed_at = None
        return result

    def within(self, work: Any, seconds: float | None = None) -> Any:
        """:meth:`_run` ``work(connection)`` for a request, which waits at most ``seconds``
        (None: the store's request deadline; a job's store has none and waits).

        The driver cannot be interrupted (a stopped server still has its socket
        acknowledged by the kernel, and its statement_timeout never fires), so the call
        runs in one of a few helper threads and the request stops waiting: it costs the
        request its deadline, and the worker only a helper thread until the server
        answers. The breaker then answers the next requests at once.
        """
        seconds = self.deadline_seconds if seconds is None else seconds
        if seconds is None or in_memory(self.url):  # in memory: one database per thread
            return self._run(work)
        self._process()
        self._guard()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        READ_THREADS, thread_name_prefix="prediction-store-read")
        future = self._pool.submit(self._run, work)
        try:
            return future.result(timeout=max(seconds, 0.01))
        except concurrent.futures.TimeoutError:
            self._failed_at = time.monotonic()
            raise StoreUnavailable(f"the database did not answer within {seconds:g} s"
                                   ) from None

    def _deadline(self) -> float | None:
        """When a request's database work must be done (monotonic), None for jobs."""
        seconds = self.deadline_seconds
        return None if seconds is None else time.monotonic() + seconds

    def status(self) -> str:
        """``ok``, or ``degraded`` while the database does not answer or the writer cannot
        write (predictions are then answered and wait in the spool). Never trips the
        breaker and never changes what is written."""
        if self._drainer is not None and self._drainer.failing is not None:
            return "degraded"
        try:
            self.within(lambda conn: conn.execute(sa.text("SELECT 1")),
                        min(self.deadline_seconds or STATUS_SECONDS, STATUS_SECONDS))
        except StoreUnavailable:
            return "degraded"
        return "ok"

    # ------------------------------------------------------------------ writes

    def _write_lines(self, lines: list[list[Any]]) -> int:
        """The writer's group insert: spool lines, one transaction (raises on failure)."""
        def work(conn: sa.Connection) -> int:
            plan = self._plan
            if plan is None or plan.dialect is not conn.dialect:
                plan = self._plan = InsertPlan(conn.dialect)
            return plan.execute(conn, lines)
        try:
            return self._run(work, guard=False)
        except StoreUnavailable:
            STORE_ERRORS.labels("write").inc()  # what the CreditRiskStoreErrors alert watches
            raise

    def save(self, request_id: str, records: list[dict[str, Any]],
             results: list[dict[str, Any]], model_name: str, model_version: str,
             batch: bool, now: datetime | None = None, prediction_id: str | None = None,
             client: str | None = None) -> int:
        """Insert one row per applicant now, in one statement; returns the rows given.

        ``prediction_id`` (the key feedback uses; the API issues one per request)
        defaults to ``request_id`` for jobs and tests; ``client`` is who asked.

        Raises:
            StoreUnavailable: the database failed (or failed recently).
        """
        line = line_of(prediction_id or request_id, request_id, batch,
                       now or datetime.now(timezone.utc), model_name, model_version, client,
                       records, results)
        self._guard()
        try:
            return self._write_lines([line])
        except StoreUnavailable:
            self._failed_at = time.monotonic()
            raise

    def enqueue(self, request_id: str, records: list[dict[str, Any]],
                results: list[dict[str, Any]], model_name: str, model_version: str,
                batch: bool, now: datetime | None = None, prediction_id: str | None = None,
                client: str | None = None) -> bool:
        """Append one request's rows to this process's spool; they are durable when this
        returns, and the writer stores them soon after. False (counted as dropped) only
        when the spool's disk refuses the line."""
        line = line_of(prediction_id or request_id, request_id, batch,
                       now or datetime.now(timezone.utc), model_name, model_version, client,
                       records, results)
        drainer = self.drainer()
        try:
            drainer.spool.append(line)
        except OSError as exc:
            STORE_ERRORS.labels("spool").inc()
            DROPPED_ROWS.labels("spool_failed").inc(len(records))
            log.error("prediction not spooled", extra={"reason": _reason(exc),
                                                       "request_id": request_id})
            return False
        drainer.start()
        return True

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every line this process spooled so far is stored.

        Returns:
            False when ``timeout`` seconds passed first (the lines stay in the spool).
        """
        if self._pid != os.getpid() or self._drainer is None:
            return True  # nothing of this process's is spooled
        return self._drainer.flush(timeout)

    def backlog(self) -> int:
        """Lines of this process spooled and not yet stored."""
        return 0 if self._drainer is None or self._pid != os.getpid() else self._drainer.backlog()

    # ------------------------------------------------------------------ outcomes

    def label(self, prediction_id: str, item: int, outcome: str, *, by: str | None = None,
              owner: str | None = None, correction: str | None = None,
              now: datetime | None = None) -> tuple[str, dict[str, Any] | None]:
        """Record the observed outcome of one prediction.

        Args:
            prediction_id: the server-issued id the prediction answered.
            item: the applicant's index in its batch.
            outcome: what happened.
            by: who records it (stored as ``labelled_by``).
            owner: when given, only a prediction made by this client may be labelled;
                another's is ``unknown``, exactly as a missing one.
            correction: a reason: an outcome already recorded is changed, and the change
                goes to ``outcome_corrections``.

        Returns:
            ``("created" | "unchanged" | "conflict" | "corrected", row)``, or
            ``("unknown", None)``. A conflict leaves the outcome as it was.
        """
        deadline = self._deadline()
        self.flush(FLUSH_TIMEOUT_SECONDS if deadline is None else self.deadline_seconds / 2)
        when = now or datetime.now(timezone.utc)
        args = (prediction_id, item, outcome, by, owner, correction, when)
        return self.within(lambda conn: _label(conn, *args), _left(deadline))

    # ------------------------------------------------------------------ reads

    def window(self, last: int | None = None, days: float | None = None,
               labelled_only: bool = False, now: datetime | None = None
               ) -> list[dict[str, Any]]:
        """Stored predictions with their outcomes, oldest first: the ``last`` N rows, or
        those of the last ``days`` days, or all; features decoded from JSON."""
        deadline = self._deadline()
        self.flush(FLUSH_TIMEOUT_SECONDS if deadline is None else self.deadline_seconds / 2)
        join = predictions.outerjoin(outcomes, visible_outcome())
        query = sa.select(predictions, outcomes.c.outcome, outcomes.c.labelled_at,
                          outcomes.c.labelled_by).select_from(join)
        if labelled_only:
            query = query.where(outcomes.c.outcome.is_not(None))
        if days is not None:
            since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
            query = query.where(predictions.c.created_at >= since)
        query = query.order_by(predictions.c.id.desc())
        if last is not None:
            query = query.limit(last)
        rows = self.within(lambda conn: [dict(r) for r in conn.execute(query).mappings()],
                           _left(deadline))
        for row in rows:
            row["features"] = json.loads(row["features"])
        rows.reverse()
        return rows

    def dispose(self) -> None:
        """Write what is spooled, then close this process's connections (tests, job ends)."""
        self.flush()
        if self._drainer is not None and self._pid == os.getpid():
            self._drainer.close()
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine, self._ready = None, False


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _label(conn: sa.Connection, prediction_id: str, item: int, outcome: str,
           by: str | None, owner: str | None, correction: str | None,
           when: datetime) -> tuple[str, dict[str, Any] | None]:
    """:meth:`PredictionStore.label` inside one transaction."""
    key_o = (outcomes.c.prediction_id == prediction_id) & (outcomes.c.item == item)
    # One read of every item of the id: a consistent answer while a writer adds them.
    stored = conn.execute(sa.select(predictions.c.item, predictions.c.client).where(
        predictions.c.prediction_id == prediction_id)).all()
    made = next((r for r in stored if r.item == item), None)
    if made is None and (stored or not recent_server_id(prediction_id)):
        return "unknown", None  # stored without this item, or old, or not ours
    if made is not None and owner is not None and made.client != owner:
        return "unknown", None
    existing = conn.execute(sa.select(outcomes).where(key_o)).mappings().first()
    if existing is not None and made is not None and existing["owner"] not in (None,
                                                                               made.client):
        # Left by a client that may not label it, before the prediction was stored: it
        # never counted (the join ignores it) and must not block the owner.
        conn.execute(outcomes.delete().where(key_o))
        existing = None
    if existing is None:
        inserted = conn.execute(_insert_outcome(conn.dialect).values(
            prediction_id=prediction_id, item=item, outcome=outcome, labelled_at=when,
            labelled_by=by, owner=owner).returning(outcomes.c.item)).first()
        if inserted is not None:
            return "created", {"outcome": outcome, "labelled_by": by,
                               "client": made.client if made is not None else None}
        existing = conn.execute(sa.select(outcomes).where(key_o)).mappings().first()
    if existing["outcome"] == outcome:
        return "unchanged", dict(existing)
    if correction is None:
        return "conflict", dict(existing)
    conn.execute(corrections.insert().values(
        prediction_id=prediction_id, item=item, previous_outcome=existing["outcome"],
        outcome=outcome, corrected_by=by or "unknown", reason=correction, corrected_at=when))
    conn.execute(outcomes.update().where(key_o).values(outcome=outcome, labelled_at=when,
                                                       labelled_by=by))
    return "corrected", {**existing, "outcome": outcome, "labelled_by": by}


def _insert_outcome(dialect: sa.Dialect) -> Any:
    """An outcome INSERT that does nothing when another worker recorded one first."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(outcomes).on_conflict_do_nothing(index_elements=["prediction_id", "item"])


def flush_all(timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
    """Write what every store of this process has spooled (a graceful exit calls this:
    gunicorn's ``worker_exit`` hook and ``atexit``); a complete spool file is then
    deleted. False if ``timeout`` ran out (the rest waits in the spool for the next
    process)."""
    deadline = time.monotonic() + timeout
    done = True
    for store in list(_STORES):
        flushed = store.flush(max(0.0, deadline - time.monotonic()))
        if flushed and store._drainer is not None and store._pid == os.getpid():
            store._drainer.close()
        done = flushed and done
    return done


def start_all() -> None:
    """Start the writer of every store of this process (gunicorn's ``post_worker_init``)."""
    for store in list(_STORES):
        store.start()


atexit.register(flush_all)
