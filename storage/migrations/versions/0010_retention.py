"""study.purged_at and what the purge removed: retention deletes a delivered study's spool and
outbox files (patient data) and keeps its work-list row and results (no patient data) longer;
`studies show` says when and what. NOTE: written beside 0009; relink down_revision to the
0009 revision at merge.

Revision ID: 0010_retention
Revises: 0009_heartbeat
Create Date: 2024-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_retention"
down_revision = "0009_heartbeat"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("purge_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("purged_files", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("purged_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("purged_bytes")
        batch.drop_column("purged_files")
        batch.drop_column("purge_reason")
        batch.drop_column("purged_at")
