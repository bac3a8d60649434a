"""Per-image flags on image_score (e.g. view_position_missing, view_from_view_code_sequence):
how an image's eligibility was decided, kept with the result.

Revision ID: 0005_image_flags
Revises: 0004_ignored_instances
Create Date: 2024-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_image_flags"
down_revision = "0004_ignored_instances"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_score") as batch:
        batch.add_column(sa.Column("flags_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_score") as batch:
        batch.drop_column("flags_json")
