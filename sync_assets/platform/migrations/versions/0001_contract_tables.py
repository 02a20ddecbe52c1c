"""Create every contract table of SPEC §3 with its keys, constraints and the sync's indexes.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 11:05:17.550808
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "activities",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("credit", sa.Float(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("future_learn_course_uuid", sa.Text(), nullable=True),
        sa.Column("slug", sa.Text(), nullable=True),
        sa.Column("stem_activity_code", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activities")),
        sa.UniqueConstraint(
            "future_learn_course_uuid", name=op.f("uq_activities_future_learn_course_uuid")
        ),
    )
    op.create_table(
        "programmes",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programmes")),
        sa.UniqueConstraint("slug", name=op.f("uq_programmes_slug")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("forgotten", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index("ix_users_lower_email", "users", [sa.text("lower(email)")])
    op.create_table(
        "achievements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("activity_id", sa.Text(), nullable=False),
        sa.Column("programme_id", sa.Text(), nullable=True),
        sa.Column("progress", sa.Integer(), server_default="0", nullable=False),
        sa.Column("state", sa.Text(), server_default="enrolled", nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "state IN ('enrolled', 'in_progress', 'complete', 'dropped')",
            name=op.f("ck_achievements_state"),
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name=op.f("ck_achievements_progress")),
        sa.ForeignKeyConstraint(
            ["activity_id"], ["activities.id"], name=op.f("fk_achievements_activity_id_activities")
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_achievements_programme_id_programmes"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_achievements_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_achievements")),
        sa.UniqueConstraint(
            "user_id", "activity_id", name=op.f("uq_achievements_user_id_activity_id")
        ),
    )
    op.create_index(op.f("ix_achievements_activity_id"), "achievements", ["activity_id"])

    op.create_table(
        "future_learn_memberships",
        sa.Column("membership_uuid", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("external_learner_id", sa.Text(), nullable=True),
        sa.Column("learner_uuid", sa.Text(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_future_learn_memberships_user_id_users")
        ),
        sa.PrimaryKeyConstraint("membership_uuid", name=op.f("pk_future_learn_memberships")),
    )
    op.create_index(
        op.f("ix_future_learn_memberships_user_id"), "future_learn_memberships", ["user_id"]
    )

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notifications_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("user_id", "kind", name=op.f("uq_notifications_user_id_kind")),
    )
    op.create_table(
        "programme_activity_groupings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("programme_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("required_for_completion", sa.Integer(), server_default="1", nullable=False),
        sa.Column("sort_key", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_programme_activity_groupings_programme_id_programmes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programme_activity_groupings")),
        sa.UniqueConstraint(
            "programme_id", "title", name=op.f("uq_programme_activity_groupings_programme_id_title")
        ),
    )
    op.create_table(
        "user_programme_enrolments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("programme_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="enrolled", nullable=False),
        sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("auto_enrolled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("certificate_number", sa.Integer(), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "state IN ('enrolled', 'unenrolled', 'pending', 'complete')",
            name=op.f("ck_user_programme_enrolments_state"),
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_user_programme_enrolments_programme_id_programmes"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_programme_enrolments_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_programme_enrolments")),
        sa.UniqueConstraint(
            "programme_id",
            "certificate_number",
            name=op.f("uq_user_programme_enrolments_programme_id_certificate_number"),
        ),
        sa.UniqueConstraint(
            "user_id",
            "programme_id",
            name=op.f("uq_user_programme_enrolments_user_id_programme_id"),
        ),
    )
    op.create_index(
        op.f("ix_user_programme_enrolments_programme_id_state_pending_since"),
        "user_programme_enrolments",
        ["programme_id", "state", "pending_since"],
    )

    op.create_table(
        "achievement_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("achievement_id", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.Text(), nullable=True),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["achievement_id"],
            ["achievements.id"],
            name=op.f("fk_achievement_transitions_achievement_id_achievements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_achievement_transitions")),
    )
    op.create_index(
        op.f("ix_achievement_transitions_achievement_id"),
        "achievement_transitions",
        ["achievement_id"],
    )

    op.create_table(
        "completion_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("achievement_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("activity_id", sa.Text(), nullable=False),
        sa.Column("programme_id", sa.Text(), nullable=True),
        sa.Column("dagster_run_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["achievement_id"],
            ["achievements.id"],
            name=op.f("fk_completion_events_achievement_id_achievements"),
        ),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_completion_events_activity_id_activities"),
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_completion_events_programme_id_programmes"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_completion_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completion_events")),
        sa.UniqueConstraint("achievement_id", name=op.f("uq_completion_events_achievement_id")),
    )
    op.create_index(
        "ix_completion_events_pending",
        "completion_events",
        ["id"],
        sqlite_where=sa.text("handled_at IS NULL"),
        postgresql_where=sa.text("handled_at IS NULL"),
    )

    op.create_table(
        "programme_activities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("programme_id", sa.Text(), nullable=False),
        sa.Column("activity_id", sa.Text(), nullable=False),
        sa.Column("programme_activity_grouping_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_programme_activities_activity_id_activities"),
        ),
        sa.ForeignKeyConstraint(
            ["programme_activity_grouping_id"],
            ["programme_activity_groupings.id"],
            name=op.f(
                "fk_programme_activities_programme_activity_grouping_id_programme_activity_groupings"
            ),
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name=op.f("fk_programme_activities_programme_id_programmes"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programme_activities")),
        sa.UniqueConstraint(
            "programme_id",
            "activity_id",
            name=op.f("uq_programme_activities_programme_id_activity_id"),
        ),
    )
    op.create_index(
        op.f("ix_programme_activities_activity_id"), "programme_activities", ["activity_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_programme_activities_activity_id"), table_name="programme_activities")

    op.drop_table("programme_activities")
    op.drop_index("ix_completion_events_pending", table_name="completion_events")

    op.drop_table("completion_events")
    op.drop_index(
        op.f("ix_achievement_transitions_achievement_id"), table_name="achievement_transitions"
    )

    op.drop_table("achievement_transitions")
    op.drop_index(
        op.f("ix_user_programme_enrolments_programme_id_state_pending_since"),
        table_name="user_programme_enrolments",
    )

    op.drop_table("user_programme_enrolments")
    op.drop_table("programme_activity_groupings")
    op.drop_table("notifications")
    op.drop_index(
        op.f("ix_future_learn_memberships_user_id"), table_name="future_learn_memberships"
    )

    op.drop_table("future_learn_memberships")
    op.drop_index(op.f("ix_achievements_activity_id"), table_name="achievements")

    op.drop_table("achievements")
    op.drop_index("ix_users_lower_email", table_name="users")
    op.drop_table("users")
    op.drop_table("programmes")
    op.drop_table("activities")
