"""Console accounts, server-side console sessions, the audit trail, and the SHA-256 of each
instance's Accession Number (search without keeping the number). NOTE: written beside other
0011/0012 work; relink down_revision at merge.

Revision ID: 0012_console
Revises: 0010_retention
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_console"
down_revision = "0011b_derived_findings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_account",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_user_account"),
        sa.UniqueConstraint("username", name="uq_user_account_username"),
    )
    op.create_table(
        "console_session",
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notice", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("token_sha256", name="pk_console_session"),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"], ondelete="CASCADE",
                                name="fk_console_session_user_id_user_account"),
    )
    op.create_index("ix_console_session_user_id", "console_session", ["user_id"])
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("before_json", sa.Text(), nullable=True),
        sa.Column("after_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_event"),
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_action", "audit_event", ["action"])
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("accession_sha256", sa.String(64), nullable=True))
        batch.create_index("ix_instance_accession_sha256", ["accession_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.drop_index("ix_instance_accession_sha256")
        batch.drop_column("accession_sha256")
    op.drop_table("audit_event")
    op.drop_table("console_session")
    op.drop_table("user_account")
