"""heartbeat: one row per running node process ("host:pid"), rewritten every few seconds and
deleted on a clean shutdown, with how far its model got (loaded, loading, or why not). `status`
reads it to tell a running node from a stopped or broken one; keyed by host and pid so several
processes on several hosts can share one database.

Revision ID: 0009_heartbeat
Revises: 0008_study_retry_at
Create Date: 2024-01-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_heartbeat"
down_revision = "0008_study_retry_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeat",
        sa.Column("process_id", sa.String(128), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_state", sa.String(16), nullable=False),
        sa.Column("model_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("process_id", name="pk_heartbeat"),
    )


def downgrade() -> None:
    op.drop_table("heartbeat")
