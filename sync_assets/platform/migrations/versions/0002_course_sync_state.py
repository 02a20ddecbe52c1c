"""Add course_sync_state: each course's enrolment report size at its last successful sync.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:36:22.762703
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "course_sync_state",
        sa.Column("course_uuid", sa.Text(), nullable=False),
        sa.Column("enrolment_count", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dagster_run_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("course_uuid", name=op.f("pk_course_sync_state")),
    )


def downgrade() -> None:
    op.drop_table("course_sync_state")
