"""Threshold profiles: immutable versions and the activation history.

Both tables are append-only; database triggers (SQLite, PostgreSQL) refuse UPDATE and DELETE,
so not even a hand-written statement can change which thresholds produced an earlier SR.

Revision ID: 0002_threshold_profiles
Revises: 0001_worklist
Create Date: 2024-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_threshold_profiles"
down_revision = "0001_worklist"
branch_labels = None
depends_on = None

APPEND_ONLY = ("threshold_profile", "threshold_activation")
PG_FUNCTION = """
CREATE FUNCTION dicom_node_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable: create a new version instead', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "threshold_profile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("thresholds_json", sa.Text(), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("provenance_json", sa.Text(), nullable=False),
        sa.Column("based_on_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_threshold_profile"),
        sa.UniqueConstraint("version", name="uq_threshold_profile_version"),
    )
    op.create_table(
        "threshold_activation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_version", sa.Integer(), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_by", sa.String(128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_threshold_activation"),
        sa.ForeignKeyConstraint(
            ["profile_version"],
            ["threshold_profile.version"],
            name="fk_threshold_activation_profile_version_threshold_profile",
        ),
    )
    op.create_index(
        "ix_threshold_activation_profile_version", "threshold_activation", ["profile_version"]
    )
    _create_append_only_triggers(op.get_bind().dialect.name)


def _create_append_only_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
    for table in APPEND_ONLY:
        if dialect == "sqlite":
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table}"
                    f" BEGIN SELECT RAISE(ABORT, '{table} rows are immutable:"
                    " create a new version instead'); END"
                )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION dicom_node_append_only()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS dicom_node_append_only()")
    op.drop_index("ix_threshold_activation_profile_version", table_name="threshold_activation")
    op.drop_table("threshold_activation")
    op.drop_table("threshold_profile")
