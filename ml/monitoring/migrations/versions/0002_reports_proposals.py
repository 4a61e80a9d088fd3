"""Monitoring reports and promotion proposals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

The monitor job writes its reports to the store (``GET /monitoring`` and ``/metrics``
serve the newest); ``python -m ml retrain`` writes its promotion proposals there.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "monitoring_reports",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("window_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("labelled", sa.Integer, nullable=False),
        sa.Column("report", sa.Text, nullable=False))
    op.create_index("ix_monitoring_reports_created_at", "monitoring_reports", ["created_at"])
    op.create_table(
        "promotion_proposals",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("champion_version", sa.String(64), nullable=False),
        sa.Column("challenger_version", sa.String(64), nullable=True),
        sa.Column("promote", sa.Boolean, nullable=False),
        sa.Column("expected_cost_gain", sa.Float, nullable=False),
        sa.Column("decision", sa.String(500), nullable=False),
        sa.Column("proposal", sa.Text, nullable=False))
    op.create_index("ix_promotion_proposals_created_at", "promotion_proposals",
                    ["created_at"])


def downgrade() -> None:
    op.drop_table("promotion_proposals")
    op.drop_table("monitoring_reports")
