"""Skip unchanged courses: what each course was last synced from, and the linking generation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("course_sync_state") as batch:
        batch.add_column(sa.Column("report_fingerprint", sa.Text(), nullable=True))
        batch.add_column(sa.Column("platform_fingerprint", sa.Text(), nullable=True))
    op.create_table(
        "linking_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("forgotten_digest", sa.Text(), nullable=False),
        sa.Column("links_digest", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_linking_state")),
    )


def downgrade() -> None:
    op.drop_table("linking_state")
    with op.batch_alter_table("course_sync_state") as batch:
        batch.drop_column("platform_fingerprint")
        batch.drop_column("report_fingerprint")
