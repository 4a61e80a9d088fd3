"""Promotion proposals in the prediction store: what ``python -m ml retrain`` proposes.

A proposal (champion and challenger, their held-out metrics, the decision and why, the
command that applies it; built by :mod:`ml.training.retrain`) is one row of
``promotion_proposals`` (:mod:`ml.monitoring.schema`), the whole document as JSON beside
the columns a reviewer filters on. The row is the durable record of a cluster run, whose
pod keeps its files only until it ends; ``python -m ml proposal`` prints one back as the
file that ``python -m ml promote`` and the promote workflow take.

SQLAlchemy only, like the rest of the store (no pandas, no sklearn: the import-linter
contract), and every call runs under the store's deadline when it has one.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ml.monitoring.schema import first_document, newest_of, proposals
from ml.monitoring.store import PredictionStore

# The longest ``decision`` column value (schema.proposals); the full text is in the JSON.
DECISION_CHARS = 500


def save(store: PredictionStore, proposal: dict[str, Any], now: datetime | None = None) -> int:
    """Insert ``proposal`` (a :func:`ml.training.retrain.build_proposal` document) and
    return its id.

    Raises:
        ml.monitoring.store.StoreUnavailable: the database cannot be written.
    """
    challenger = proposal.get("challenger") or {}
    row = {"created_at": now or datetime.now(timezone.utc),
           "model_name": proposal["model_name"],
           "champion_version": proposal["champion"]["version"],
           "challenger_version": challenger.get("version"),
           "promote": proposal["decision"] == "promote",
           "expected_cost_gain": float(proposal["expected_cost_gain"]),
           "decision": f"{proposal['decision']}: {proposal['why']}"[:DECISION_CHARS],
           "proposal": json.dumps(proposal, sort_keys=True, default=str)}

    def work(conn: sa.Connection) -> int:
        return int(conn.execute(sa.insert(proposals).values(**row)).inserted_primary_key[0])
    return store.within(work)


def newest(store: PredictionStore, model_name: str | None = None) -> dict[str, Any] | None:
    """The most recent proposal (of ``model_name`` when given), or None."""
    return _one(store, newest_of(proposals, model_name))


def by_id(store: PredictionStore, proposal_id: int) -> dict[str, Any] | None:
    """The proposal with this id, or None."""
    return _one(store, sa.select(proposals).where(proposals.c.id == proposal_id))


def _one(store: PredictionStore, query: sa.Select) -> dict[str, Any] | None:
    """The first row of ``query`` as a dict, its ``proposal`` decoded from JSON; every
    call runs under the store's deadline when it has one."""
    return store.within(lambda conn: first_document(conn, query, "proposal"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml proposal``."""
    from ml.monitoring.monitor import add_database_argument

    add_database_argument(parser)
    parser.add_argument("--id", type=int, default=None,
                        help="the proposal's id (default: the newest)")
    parser.add_argument("--model-name", default=None,
                        help="the newest proposal of this model only")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the proposal here (default: print it)")


def run(args: argparse.Namespace) -> int:
    """Print (or write) one stored proposal: the file ``python -m ml promote`` reads."""
    from ml.monitoring.monitor import open_store

    store = open_store(args.database_url)
    try:
        row = by_id(store, args.id) if args.id is not None else newest(store, args.model_name)
    finally:
        store.dispose()
    if row is None:
        raise ValueError("no such promotion proposal in the store" if args.id is not None
                         else "the store holds no promotion proposal")
    text = json.dumps(row["proposal"], indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(json.dumps({"id": row["id"], "proposal": str(args.out)}))
    return 0
