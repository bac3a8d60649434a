"""result_finding.derivation: how a derived finding's score was made ("No Finding": 1 - the
highest enabled finding score), NULL for a finding scored by its own prompt pair, so that
`studies show` and any later reader can tell a derived score from a model output. NOTE:
written beside other 0011 revisions; relink down_revision at merge.

Revision ID: 0011b_derived_findings
Revises: 0010_retention
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011b_derived_findings"
down_revision = "0011_text_report"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("result_finding") as batch:
        batch.add_column(sa.Column("derivation", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("result_finding") as batch:
        batch.drop_column("derivation")
