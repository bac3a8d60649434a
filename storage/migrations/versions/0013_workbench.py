"""Image embeddings per checkpoint (the prompt workbench scores new prompts from them),
calibration sets (the impact preview's sensitivity and specificity) and catalogue revisions
(findings added from the workbench). NOTE: written beside 0011; follows 0012_console (merged
from the console branch); relink down_revision at merge.

Revision ID: 0013_workbench
Revises: 0012_console
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_workbench"
down_revision = "0012_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_embedding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_score_id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_score_id"], ["image_score.id"], ondelete="CASCADE",
            name="fk_image_embedding_image_score_id_image_score",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_image_embedding"),
        sa.UniqueConstraint(
            "image_score_id", "checkpoint_sha256", name="uq_image_embedding_image_score_id"
        ),
    )
    op.create_index("ix_image_embedding_image_score_id", "image_embedding", ["image_score_id"])
    op.create_table(
        "calibration_set",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("labels_name", sa.String(255), nullable=False),
        sa.Column("labels_sha256", sa.String(64), nullable=False),
        sa.Column("label_policy", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("checkpoint_sha256s_json", sa.Text(), nullable=False),
        sa.Column("catalogue_version", sa.String(64), nullable=False),
        sa.Column("profile_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calibration_set"),
    )
    op.create_table(
        "calibration_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("calibration_set_id", sa.Integer(), nullable=False),
        sa.Column("finding", sa.String(128), nullable=False),
        sa.Column("labels_json", sa.Text(), nullable=False),
        sa.Column("scores_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["calibration_set_id"], ["calibration_set.id"], ondelete="CASCADE",
            name="fk_calibration_score_calibration_set_id_calibration_set",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_calibration_score"),
        sa.UniqueConstraint(
            "calibration_set_id", "finding", name="uq_calibration_score_calibration_set_id"
        ),
    )
    op.create_index(
        "ix_calibration_score_calibration_set_id", "calibration_score", ["calibration_set_id"]
    )
    op.create_table(
        "catalogue_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("entry_json", sa.Text(), nullable=True),
        sa.Column("provenance_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalogue_revision"),
        sa.UniqueConstraint("revision", name="uq_catalogue_revision_revision"),
    )


def downgrade() -> None:
    op.drop_table("catalogue_revision")
    op.drop_index("ix_calibration_score_calibration_set_id", table_name="calibration_score")
    op.drop_table("calibration_score")
    op.drop_table("calibration_set")
    op.drop_index("ix_image_embedding_image_score_id", table_name="image_embedding")
    op.drop_table("image_embedding")
