"""Add user_email_keys: each user's email in Unicode caseless form, indexed (R3 on both dialects).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 20:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_email_keys",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("email_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_email_keys")),
    )
    op.create_index(
        op.f("ix_user_email_keys_email_key"), "user_email_keys", ["email_key"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_user_email_keys_email_key"), table_name="user_email_keys")
    op.drop_table("user_email_keys")
