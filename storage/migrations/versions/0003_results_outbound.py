"""Results (per study run: model identity, thresholds used, findings, per-image scores) and
outbound deliveries (one row per object and destination).

Revision ID: 0003_results_outbound
Revises: 0002_threshold_profiles
Create Date: 2024-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_results_outbound"
down_revision = "0002_threshold_profiles"
branch_labels = None
depends_on = None

UID = 64
OUTBOUND_STATES = ("PENDING", "SENT", "DEAD")


def upgrade() -> None:
    _create_result()
    _create_result_children()
    _create_outbound()


def _create_result() -> None:
    op.create_table(
        "result",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(UID), nullable=False),
        sa.Column("result_key", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("checkpoint_sha256s_json", sa.Text(), nullable=False),
        sa.Column("catalogue_version", sa.String(64), nullable=False),
        sa.Column("clinical_use", sa.Boolean(), nullable=False),
        sa.Column("profile_version", sa.Integer(), nullable=True),
        sa.Column("aggregation", sa.String(32), nullable=False),
        sa.Column("sr_series_instance_uid", sa.String(UID), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(UID), nullable=False),
        sa.Column("summary_series_instance_uid", sa.String(UID), nullable=False),
        sa.Column("summary_sop_instance_uid", sa.String(UID), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_result"),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name="fk_result_study_id_study", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["result.id"], name="fk_result_supersedes_id_result"
        ),
        sa.UniqueConstraint("result_key", name="uq_result_result_key"),
        sa.UniqueConstraint("study_id", "version", name="uq_result_study_id"),
        sa.UniqueConstraint("sr_sop_instance_uid", name="uq_result_sr_sop_instance_uid"),
        sa.UniqueConstraint(
            "summary_sop_instance_uid", name="uq_result_summary_sop_instance_uid"
        ),
    )
    op.create_index("ix_result_study_id", "result", ["study_id"])


def _create_result_children() -> None:
    op.create_table(
        "result_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_result_finding"),
        sa.ForeignKeyConstraint(
            ["result_id"], ["result.id"], name="fk_result_finding_result_id_result",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_result_finding_result_id", "result_finding", ["result_id"])
    op.create_table(
        "image_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(UID), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("scores_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_image_score"),
        sa.ForeignKeyConstraint(
            ["result_id"], ["result.id"], name="fk_image_score_result_id_result",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_image_score_result_id", "image_score", ["result_id"])


def _create_outbound() -> None:
    op.create_table(
        "outbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(UID), nullable=False),
        sa.Column("sop_instance_uid", sa.String(UID), nullable=False),
        sa.Column("sop_class_uid", sa.String(UID), nullable=False),
        sa.Column("file_path", sa.String(512), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*OUTBOUND_STATES, name="outbound_state", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbound"),
        sa.ForeignKeyConstraint(
            ["result_id"], ["result.id"], name="fk_outbound_result_id_result", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "sop_instance_uid", "destination", name="uq_outbound_sop_instance_uid"
        ),
    )
    op.create_index("ix_outbound_result_id", "outbound", ["result_id"])
    op.create_index("ix_outbound_due", "outbound", ["state", "destination", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbound_due", table_name="outbound")
    op.drop_index("ix_outbound_result_id", table_name="outbound")
    op.drop_table("outbound")
    op.drop_index("ix_image_score_result_id", table_name="image_score")
    op.drop_table("image_score")
    op.drop_index("ix_result_finding_result_id", table_name="result_finding")
    op.drop_table("result_finding")
    op.drop_index("ix_result_study_id", table_name="result")
    op.drop_table("result")
