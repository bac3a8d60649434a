"""Ignored instances: storage objects acknowledged but not analysed (no spool file, no study).

Revision ID: 0004_ignored_instances
Revises: 0003_results_outbound
Create Date: 2024-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ignored_instances"
down_revision = "0003_results_outbound"
branch_labels = None
depends_on = None

UID = 64


def upgrade() -> None:
    op.create_table(
        "ignored_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(UID), nullable=False),
        sa.Column("study_instance_uid", sa.String(UID), nullable=False),
        sa.Column("sop_class_uid", sa.String(UID), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ignored_instance"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_ignored_instance_sop_instance_uid"),
    )
    op.create_index(
        "ix_ignored_instance_study_instance_uid", "ignored_instance", ["study_instance_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_ignored_instance_study_instance_uid", table_name="ignored_instance")
    op.drop_table("ignored_instance")
