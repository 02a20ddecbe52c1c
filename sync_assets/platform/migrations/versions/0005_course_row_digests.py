"""Work per changed row: one digest per membership of what each course was last applied from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("course_sync_state") as batch:
        batch.add_column(sa.Column("row_digests", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("course_sync_state") as batch:
        batch.drop_column("row_digests")
