"""Predictions, outcomes and corrections; a store made before migrations is carried over.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

A database written before this revision has one ``predictions`` table with the outcome
in it (and, from the access-control release, ``prediction_id``/``client``/``labelled_by``
columns). Its rows move to the new tables: ``prediction_id`` defaults to the
``request_id`` (what feedback addressed them by), one row per ``(prediction_id, item)``
is kept (the newest, the one feedback labelled), and outcomes and corrections follow.
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.String(64), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("batch", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("probability_of_default", sa.Float, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.UniqueConstraint("prediction_id", "item", name="uq_predictions_prediction_item"))
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_table(
        "outcomes",
        sa.Column("prediction_id", sa.String(64), primary_key=True),
        sa.Column("item", sa.Integer, primary_key=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labelled_by", sa.String(255), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True))
    op.create_table(
        "outcome_corrections",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.String(64), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("previous_outcome", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("corrected_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("corrected_at", sa.DateTime(timezone=True), nullable=False))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    legacy = inspector.has_table("predictions")
    if legacy:
        old_corrections = inspector.has_table("outcome_corrections")
        indexes = [index["name"] for index in inspector.get_indexes("predictions")]
        op.rename_table("predictions", "legacy_predictions")
        if old_corrections:
            op.rename_table("outcome_corrections", "legacy_outcome_corrections")
        for name in indexes:  # their names are the new table's
            op.drop_index(name, table_name="legacy_predictions")
        inspector = sa.inspect(op.get_bind())
    _create()
    if legacy:
        _carry_over(inspector, old_corrections)


def _carry_over(inspector: sa.Inspector, old_corrections: bool) -> None:
    """Copy a pre-migration store into the new tables, then drop the old ones."""
    columns = {c["name"] for c in inspector.get_columns("legacy_predictions")}

    def key(alias: str) -> str:
        if "prediction_id" in columns:
            return f"COALESCE({alias}.prediction_id, {alias}.request_id)"
        return f"{alias}.request_id"
    pid = key("n")
    client = "n.client" if "client" in columns else "NULL"
    by = "n.labelled_by" if "labelled_by" in columns else "NULL"
    # Where an id and index repeat (a reused request id), the newest row is kept.
    newest = (f"SELECT * FROM legacy_predictions l WHERE l.id = (SELECT MAX(m.id) FROM "
              f"legacy_predictions m WHERE {key('m')} = {key('l')} AND m.item = l.item)")
    op.execute(f"INSERT INTO predictions (prediction_id, item, request_id, batch, created_at, "
               f"model_name, model_version, features, probability_of_default, decision, "
               f"client) SELECT {pid}, n.item, n.request_id, n.batch, n.created_at, n.model_name, "
               f"n.model_version, n.features, n.probability_of_default, n.decision, {client} "
               f"FROM ({newest}) AS n ORDER BY n.id")
    op.execute(f"INSERT INTO outcomes (prediction_id, item, outcome, labelled_at, labelled_by, "
               f"owner) SELECT {pid}, n.item, n.outcome, COALESCE(n.labelled_at, n.created_at), "
               f"{by}, NULL FROM ({newest}) AS n WHERE n.outcome IS NOT NULL")
    if old_corrections:
        op.execute(f"INSERT INTO outcome_corrections (prediction_id, item, previous_outcome, "
                   f"outcome, corrected_by, reason, corrected_at) SELECT {key('p')}, p.item, "
                   f"c.previous_outcome, c.outcome, c.corrected_by, c.reason, c.corrected_at "
                   f"FROM legacy_outcome_corrections c JOIN legacy_predictions p "
                   f"ON p.id = c.prediction_row ORDER BY c.id")
        op.drop_table("legacy_outcome_corrections")
    op.drop_table("legacy_predictions")


def downgrade() -> None:
    op.drop_table("outcome_corrections")
    op.drop_table("outcomes")
    op.drop_table("predictions")
