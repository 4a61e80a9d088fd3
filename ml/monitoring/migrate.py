"""Schema migrations of the prediction store, applied by an explicit command.

``python -m ml db upgrade`` (a Kubernetes Job or an init container in production, with
``DATABASE_URL``) brings the database to the newest revision of
``ml/monitoring/migrations``; ``python -m ml db current`` prints where it is. The workers
never change a shared schema: many processes in many pods would race. The one exception
is an SQLite file (``make run``, single-machine tests): it belongs to one machine, so the
API upgrades it once at start, in the gunicorn master before the workers fork
(:func:`ensure_sqlite`), and a job or test upgrades the file it opens.

Alembic is configured here, in code (no ``alembic.ini``): the script location is this
package's ``migrations`` folder and the connection is handed to ``env.py``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import sqlalchemy as sa

# The newest revision; a database at it needs no Alembic import to be recognised.
HEAD = "0002"
# The PostgreSQL advisory lock that serialises concurrent upgrades (any fixed number).
LOCK_KEY = 7_240_011
_SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def _config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _SCRIPTS)
    config.attributes["connection"] = connection
    return config


def current(engine: sa.Engine) -> str | None:
    """The database's revision (None: never migrated, or empty)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url_or_engine: str | sa.Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (one transaction per run)."""
    from alembic import command

    from ml.monitoring.schema import make_engine

    engine = (make_engine(url_or_engine) if isinstance(url_or_engine, str)
              else url_or_engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Pods starting together migrate at once: one at a time (the lock ends with
            # the transaction); the next finds the database at head and does nothing.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        command.upgrade(_config(conn), revision)
    if isinstance(url_or_engine, str):
        engine.dispose()


def ensure_sqlite(engine: sa.Engine) -> None:
    """Upgrade an SQLite store that is behind (see the module docstring for why only
    SQLite); PostgreSQL is left to ``python -m ml db upgrade``."""
    if engine.dialect.name == "sqlite" and current(engine) != HEAD:
        upgrade(engine)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m ml db upgrade|current [--url URL]``."""
    parser.add_argument("action", choices=("upgrade", "current"))
    parser.add_argument("--url", default=None,
                        help="SQLAlchemy URL (default: DATABASE_URL, else the SQLite default)")
    parser.add_argument("--revision", default="head", help="upgrade to this revision")


def run(args: argparse.Namespace) -> int:
    """Apply the migrations, or print the database's revision."""
    from ml.monitoring.schema import default_url, make_engine

    url = args.url or os.environ.get("DATABASE_URL") or default_url()
    if args.action == "upgrade":
        upgrade(url, args.revision)
    engine = make_engine(url)
    try:
        print(current(engine) or "none")
    finally:
        engine.dispose()
    return 0
