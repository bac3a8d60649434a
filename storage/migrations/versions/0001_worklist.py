"""Work list: studies and their instances.

Revision ID: 0001_worklist
Revises:
Create Date: 2024-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_worklist"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("RECEIVING", "QUEUED", "PROCESSING", "DONE", "SKIPPED", "FAILED")


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*STATES, name="study_state", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("first_arrival_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_arrival_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.Column("reopened_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_study"),
        sa.UniqueConstraint("study_instance_uid", name="uq_study_study_instance_uid"),
    )
    op.create_index("ix_study_state", "study", ["state"])
    op.create_index("ix_study_state_last_arrival", "study", ["state", "last_arrival_at"])
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("body_part_examined", sa.String(64), nullable=True),
        sa.Column("view_position", sa.String(16), nullable=True),
        sa.Column("spool_path", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_instance"),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name="fk_instance_study_id_study", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("sop_instance_uid", name="uq_instance_sop_instance_uid"),
    )
    op.create_index("ix_instance_study_id", "instance", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_instance_study_id", table_name="instance")
    op.drop_table("instance")
    op.drop_index("ix_study_state_last_arrival", table_name="study")
    op.drop_index("ix_study_state", table_name="study")
    op.drop_table("study")
