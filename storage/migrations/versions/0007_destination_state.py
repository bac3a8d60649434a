"""Destination state (up / down / refusing, last success, last error, next probe) and the
sender's claim on an outbound row (claimed_by "host:pid", claimed_until), kept apart from the
row's own retry time so that a destination coming back can make every pending row due at once
without taking rows another sender is sending.

Revision ID: 0007_destination_state
Revises: 0005_image_flags
Create Date: 2024-01-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_destination_state"
down_revision = "0005_image_flags"
branch_labels = None
depends_on = None

DESTINATION_STATES = ("UP", "DOWN", "REFUSING")


def upgrade() -> None:
    op.create_table(
        "destination_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*DESTINATION_STATES, name="destination_status", native_enum=False,
                    length=16),
            nullable=False,
        ),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_probe_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_destination_state"),
    )
    with op.batch_alter_table("outbound") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbound") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
    op.drop_table("destination_state")
