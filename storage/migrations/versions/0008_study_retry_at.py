"""study.not_before: a study that failed for a reason that can go away by itself (disk full,
database busy) waits in QUEUED until this time, on a doubling backoff, instead of being tried
again at once. study.reprocess: an admin asked for a new result (`studies reprocess`), made even
when the inputs are those of the last one.

Revision ID: 0008_study_retry_at
Revises: 0007_destination_state
Create Date: 2024-01-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_study_retry_at"
down_revision = "0007_destination_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("reprocess", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("reprocess")
        batch.drop_column("not_before")
