"""The platform database schema (SPEC §3), as SQLAlchemy Core tables.

The contract columns are exactly SPEC §3's; a few columns and one table are ours:
`activities.slug` / `stem_activity_code` (catalogue identity), `future_learn_memberships.gone_at`
(R2: a 404 is kept, not asked again), `completion_events` (the transactional outbox that hands
completions to certificate jobs exactly once) and `course_sync_state` (what the circuit breaker
compares a course's enrolment report with). Migrations under `migrations/` must produce exactly
this metadata; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa

ACHIEVEMENT_STATES = ("enrolled", "in_progress", "complete", "dropped")
ENROLMENT_STATES = ("enrolled", "unenrolled", "pending", "complete")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _timestamp(name: str, **kwargs) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)


def _created_at() -> sa.Column:
    return _timestamp("created_at", nullable=False, server_default=sa.func.now())


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=name)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("forgotten", sa.Boolean, nullable=False, server_default=sa.false()),
    # R3 matches emails ignoring letter case.
    sa.Index("ix_users_lower_email", sa.func.lower(sa.column("email"))),
)

# R3's "email ignoring letter case" as a key the database can index on both dialects: the
# Unicode caseless form of each user's email (rules.linking.email_key), kept with the email it was
# computed from so that a changed email is noticed. SQL lower() folds ASCII only on SQLite, and
# lower() is not case folding on PostgreSQL either (ß, ς, ﬁ …). Derived: rebuilt from `users`.
user_email_keys = sa.Table(
    "user_email_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("email_key", sa.Text, nullable=False),
    sa.Index(None, "email_key"),
)

activities = sa.Table(
    "activities",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("title", sa.Text),
    sa.Column("credit", sa.Float),
    sa.Column("category", sa.Text),
    sa.Column("provider", sa.Text),
    sa.Column("future_learn_course_uuid", sa.Text, unique=True),
    sa.Column("slug", sa.Text),
    sa.Column("stem_activity_code", sa.Text),
)

programmes = sa.Table(
    "programmes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("slug", sa.Text, unique=True),
    sa.Column("title", sa.Text),
)

programme_activity_groupings = sa.Table(
    "programme_activity_groupings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("programme_id", sa.Text, sa.ForeignKey("programmes.id"), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("required_for_completion", sa.Integer, nullable=False, server_default="1"),
    sa.Column("sort_key", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("programme_id", "title"),
)

programme_activities = sa.Table(
    "programme_activities",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("programme_id", sa.Text, sa.ForeignKey("programmes.id"), nullable=False),
    sa.Column("activity_id", sa.Text, sa.ForeignKey("activities.id"), nullable=False),
    sa.Column(
        "programme_activity_grouping_id",
        sa.Integer,
        sa.ForeignKey("programme_activity_groupings.id"),
    ),
    sa.UniqueConstraint("programme_id", "activity_id"),
    sa.Index(None, "activity_id"),
)

user_programme_enrolments = sa.Table(
    "user_programme_enrolments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("programme_id", sa.Text, sa.ForeignKey("programmes.id"), nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="enrolled"),
    sa.Column("flagged", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("auto_enrolled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("certificate_number", sa.Integer),
    _timestamp("pending_since"),
    _created_at(),
    sa.UniqueConstraint("user_id", "programme_id"),
    # C2: a certificate number is never reused within a programme.
    sa.UniqueConstraint("programme_id", "certificate_number"),
    _one_of("state", ENROLMENT_STATES, "state"),
    # C2 looks for enrolments pending for seven days.
    sa.Index(None, "programme_id", "state", "pending_since"),
)

future_learn_memberships = sa.Table(
    "future_learn_memberships",
    metadata,
    sa.Column("membership_uuid", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id")),
    sa.Column("external_learner_id", sa.Text),
    sa.Column("learner_uuid", sa.Text),
    _timestamp("fetched_at"),
    _timestamp("linked_at"),
    _timestamp("gone_at"),
    sa.Index(None, "user_id"),
)

achievements = sa.Table(
    "achievements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("activity_id", sa.Text, sa.ForeignKey("activities.id"), nullable=False),
    sa.Column("programme_id", sa.Text, sa.ForeignKey("programmes.id")),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state", sa.Text, nullable=False, server_default="enrolled"),
    _timestamp("completed_at"),
    _created_at(),
    _timestamp("updated_at", nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("user_id", "activity_id"),
    _one_of("state", ACHIEVEMENT_STATES, "state"),
    sa.CheckConstraint("progress BETWEEN 0 AND 100", name="progress"),
    # The sync reads a course's achievements by activity.
    sa.Index(None, "activity_id"),
)

achievement_transitions = sa.Table(
    "achievement_transitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("achievement_id", sa.Integer, sa.ForeignKey("achievements.id"), nullable=False),
    sa.Column("from_state", sa.Text),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("metadata", sa.JSON),
    _created_at(),
    sa.Index(None, "achievement_id"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    _created_at(),
    sa.UniqueConstraint("user_id", "kind"),
)

# The transactional outbox: written in the same transaction as the achievement that became
# complete; unique per achievement, so no retry can produce a second event.
completion_events = sa.Table(
    "completion_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("achievement_id", sa.Integer, sa.ForeignKey("achievements.id"), nullable=False),
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("activity_id", sa.Text, sa.ForeignKey("activities.id"), nullable=False),
    sa.Column("programme_id", sa.Text, sa.ForeignKey("programmes.id")),
    sa.Column("dagster_run_id", sa.Text),
    _created_at(),
    _timestamp("handled_at"),
    sa.Column("outcome", sa.Text),
    sa.UniqueConstraint("achievement_id"),
    sa.Index(
        "ix_completion_events_pending",
        "id",
        sqlite_where=sa.text("handled_at IS NULL"),
        postgresql_where=sa.text("handled_at IS NULL"),
    ),
)

# The enrolment report size of each course at its last successful sync: a report that shrinks
# sharply is more likely an API fault than teachers leaving, and progress is not applied from it.
course_sync_state = sa.Table(
    "course_sync_state",
    metadata,
    sa.Column("course_uuid", sa.Text, primary_key=True),
    sa.Column("enrolment_count", sa.Integer, nullable=False),
    _timestamp("synced_at", nullable=False),
    sa.Column("dagster_run_id", sa.Text),
    # What the course was last applied from, so that a night on which neither changed skips it:
    # its reports (and runs) as served, and the platform side (activity, its achievements, the
    # linking generation). Null: recompute next time (never synced, or synced with stale changes).
    sa.Column("report_fingerprint", sa.Text),
    sa.Column("platform_fingerprint", sa.Text),
    # One digest per membership of the reports it was applied from (sync/row_digests.py), so that
    # a next day replans only the learners whose rows changed. Null: plan the whole course.
    sa.Column("row_digests", sa.LargeBinary),
)

# One row: a counter the sync moves on whenever the platform changed something linking depends
# on outside the sync (a user who could link now, a user forgotten, a link made or moved by the
# platform), with what it was compared against. A course synced under an older generation is not
# skipped. `links_digest` is a sum of row hashes, kept up to date by the sync's own links.
linking_state = sa.Table(
    "linking_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("forgotten_digest", sa.Text, nullable=False),
    sa.Column("links_digest", sa.Text, nullable=False),
)
