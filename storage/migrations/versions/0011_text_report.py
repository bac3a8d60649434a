"""The text report (an Enhanced SR a viewer renders as a short report) beside each result's
findings SR and summary image: its series and instance UIDs. Null for results made before it
existed (nothing to supersede or resend then). NOTE: written beside other 0011 revisions;
relink down_revision at merge.

Revision ID: 0011_text_report
Revises: 0010_retention
Create Date: 2024-01-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_text_report"
down_revision = "0010_retention"
branch_labels = None
depends_on = None

UID = 64


def upgrade() -> None:
    with op.batch_alter_table("result") as batch:
        batch.add_column(sa.Column("text_series_instance_uid", sa.String(UID), nullable=True))
        batch.add_column(sa.Column("text_sop_instance_uid", sa.String(UID), nullable=True))
        batch.create_unique_constraint(
            "uq_result_text_sop_instance_uid", ["text_sop_instance_uid"]
        )


def downgrade() -> None:
    with op.batch_alter_table("result") as batch:
        batch.drop_constraint("uq_result_text_sop_instance_uid", type_="unique")
        batch.drop_column("text_sop_instance_uid")
        batch.drop_column("text_series_instance_uid")
