"""The prediction store's tables and engines (SQLAlchemy Core; SQLite and PostgreSQL).

Five tables. ``predictions``: one row per applicant, written once, keyed by the
server-issued ``prediction_id`` and the applicant's ``item`` index in its batch (unique:
a row replayed from a spool is inserted once). ``outcomes``: what happened, one row per
``(prediction_id, item)``, written independently of its prediction, so feedback never
waits for the prediction row (any worker or pod takes it) and a late prediction row still
finds its outcome; reads join the two. ``outcome_corrections``: every change of a recorded
outcome, with who made it and why. ``monitoring_reports``: the reports of the monitor
job (``python -m ml monitor``), which ``GET /monitoring`` and ``/metrics`` serve.
``promotion_proposals``: what ``python -m ml retrain`` proposes (champion, challenger,
their metrics, the decision and why), for review; it never swaps the served model.

The schema is created and changed by the Alembic migrations in
``ml/monitoring/migrations`` (``python -m ml db upgrade``); :data:`metadata` is what they
build, and what the tests compare the migrated database with.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Short, so an unreachable database fails fast (and /ready answers within its probe).
CONNECT_TIMEOUT_SECONDS = 2
# Longest a statement may run on the server (PostgreSQL's statement_timeout); a request
# waits at most its own deadline whatever the server does (ml.monitoring.store).
STATEMENT_TIMEOUT_SECONDS = 5
# SQLite: how long a writer waits for the file lock of another process.
SQLITE_BUSY_SECONDS = 5

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator):
    """``DateTime(timezone=True)`` read back aware, in UTC, on every backend: SQLite keeps
    no zone and returns the naive UTC time it was given; PostgreSQL returns it aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect
                             ) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


metadata = sa.MetaData()
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    # The server-issued id feedback addresses; ``request_id`` is the client's correlation
    # id, kept for tracing, never a key. ``client``: who asked (``key:NAME``, ``oidc:SUB``).
    sa.Column("prediction_id", sa.String(64), nullable=False),
    sa.Column("item", sa.Integer, nullable=False, default=0),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("batch", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("probability_of_default", sa.Float, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("client", sa.String(255), nullable=True),
    sa.UniqueConstraint("prediction_id", "item", name="uq_predictions_prediction_item"),
    sa.Index("ix_predictions_created_at", "created_at"),
)
outcomes = sa.Table(
    "outcomes", metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.Integer, primary_key=True),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("labelled_at", UtcDateTime(), nullable=False),
    sa.Column("labelled_by", sa.String(255), nullable=True),
    # The client whose prediction the labeller may label (None: ``feedback:all``). Checked
    # against the prediction's ``client`` when the two are joined, because the outcome
    # may arrive first.
    sa.Column("owner", sa.String(255), nullable=True),
)
corrections = sa.Table(
    "outcome_corrections", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(64), nullable=False),
    sa.Column("item", sa.Integer, nullable=False),
    sa.Column("previous_outcome", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("corrected_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("corrected_at", UtcDateTime(), nullable=False),
)
reports = sa.Table(
    "monitoring_reports", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("window_from", UtcDateTime(), nullable=True),
    sa.Column("window_to", UtcDateTime(), nullable=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("labelled", sa.Integer, nullable=False),
    sa.Column("report", sa.Text, nullable=False),  # the whole report, JSON
    sa.Index("ix_monitoring_reports_created_at", "created_at"),
)
proposals = sa.Table(
    "promotion_proposals", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("champion_version", sa.String(64), nullable=False),
    # None when the challenger was not saved (not better, or a report-only run).
    sa.Column("challenger_version", sa.String(64), nullable=True),
    sa.Column("promote", sa.Boolean, nullable=False),
    sa.Column("expected_cost_gain", sa.Float, nullable=False),
    sa.Column("decision", sa.String(500), nullable=False),
    sa.Column("proposal", sa.Text, nullable=False),  # the whole proposal, JSON
    sa.Index("ix_promotion_proposals_created_at", "created_at"),
)
# The columns a prediction writes, in table order.
INSERT_COLUMNS = ("prediction_id", "item", "request_id", "batch", "created_at", "model_name",
                  "model_version", "features", "probability_of_default", "decision", "client")


def visible_outcome() -> Any:
    """Join condition: an outcome belongs to a prediction when the ids match and its
    labeller was allowed to label it (any client's, or this client's)."""
    return ((outcomes.c.prediction_id == predictions.c.prediction_id)
            & (outcomes.c.item == predictions.c.item)
            & (outcomes.c.owner.is_(None) | (outcomes.c.owner == predictions.c.client)))


def newest_of(table: sa.Table, model_name: str | None = None) -> sa.Select:
    """The query of the newest row of ``reports`` or ``proposals`` (of ``model_name``
    when given): latest ``created_at``, the higher id on a tie."""
    query = sa.select(table)
    if model_name is not None:
        query = query.where(table.c.model_name == model_name)
    return query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(1)


def first_document(conn: sa.Connection, query: sa.Select, column: str
                   ) -> dict[str, Any] | None:
    """The first row of ``query`` as a dict with its JSON ``column`` decoded; None when
    there is none (the stored reports and proposals)."""
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    found = dict(row)
    found[column] = json.loads(found[column])
    return found


def default_url() -> str:
    """SQLite file in the temporary directory (``/tmp`` is the pod's writable emptyDir)."""
    return "sqlite:///" + os.path.join(tempfile.gettempdir(), "predictions.db")


def make_engine(url: str) -> Engine:
    """An engine with connect and statement timeouts; SQLite gets WAL and a busy timeout.

    PostgreSQL: ``connect_timeout`` bounds a connection attempt (and the pool wait), the
    server's ``statement_timeout`` each statement; TCP keepalives notice a vanished host.
    """
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_SECONDS * 1000}"
                                   f" -c lock_timeout={STATEMENT_TIMEOUT_SECONDS * 1000}",
                        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 2,
                        "keepalives_count": 3}
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                            pool_timeout=CONNECT_TIMEOUT_SECONDS, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the workers write without blocking readers; NORMAL sync drops the fsync per
    commit (a committed row survives a crashed process, though not a power cut: production
    runs on PostgreSQL)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def insert_ignoring_duplicates(dialect: sa.Dialect) -> Any:
    """The prediction INSERT that skips a row whose ``(prediction_id, item)`` exists (a
    spool replayed after a crash), for SQLite and PostgreSQL."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the two backends the product supports
        raise ValueError(f"unsupported database backend {dialect.name!r}")
    return insert(predictions).on_conflict_do_nothing(index_elements=["prediction_id", "item"])


def in_memory(url: str) -> bool:
    """An in-memory SQLite URL (each connection its own database: no spool, no thread)."""
    parsed = sa.engine.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


# One encoder object: json.dumps(..., separators=...) builds a new one per call.
_encode_features = json.JSONEncoder(separators=(",", ":")).encode


class InsertPlan:
    """The idempotent prediction INSERT compiled once for a dialect, run through the
    driver's ``executemany`` with each line's constant values converted once."""

    def __init__(self, dialect: sa.Dialect) -> None:
        compiled = insert_ignoring_duplicates(dialect).compile(
            dialect=dialect, column_keys=list(INSERT_COLUMNS), for_executemany=True)
        self.sql, self.dialect = compiled.string, dialect
        self.names: tuple[str, ...] | None = None
        if compiled.positional:
            if tuple(compiled.positiontup or ()) != INSERT_COLUMNS:  # pragma: no cover
                raise RuntimeError("unexpected parameter order in the compiled INSERT")
        else:
            self.names = INSERT_COLUMNS  # named paramstyle (psycopg): one dict per row
        self.convert = {name: predictions.c[name].type.dialect_impl(dialect)
                        .bind_processor(dialect) for name in INSERT_COLUMNS}

    def _once(self, name: str, value: Any) -> Any:
        convert = self.convert[name]
        return value if convert is None else convert(value)

    def rows(self, lines: Iterable[list[Any]]) -> list[Any]:
        """Driver parameters, one per applicant, from spool lines."""
        once, out = self._once, []
        for pid, request_id, batch, created, name, version, client, records, results in lines:
            head = (once("prediction_id", pid),)
            middle = (once("request_id", request_id), once("batch", batch),
                      once("created_at", datetime.fromisoformat(created)),
                      once("model_name", name), once("model_version", version))
            tail = once("client", client)
            out.extend((*head, i, *middle, _encode_features(record), float(pd), decision,
                        tail)
                       for i, (record, (pd, decision)) in enumerate(zip(records, results)))
        if self.names is not None:
            out = [dict(zip(self.names, row)) for row in out]
        return out

    def execute(self, conn: sa.Connection, lines: Iterable[list[Any]]) -> int:
        """Insert the rows in one ``executemany`` (rows already stored are skipped)."""
        rows = self.rows(lines)
        if rows:
            conn.exec_driver_sql(self.sql, rows)
        return len(rows)


def line_of(prediction_id: str, request_id: str, batch: bool, created: datetime,
            model_name: str, model_version: str, client: str | None,
            records: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[Any]:
    """One request as a spool line (what :meth:`InsertPlan.rows` reads)."""
    return [prediction_id, request_id, batch, created.isoformat(), model_name, model_version,
            client, records, [(r["probability_of_default"], r["decision"]) for r in results]]
