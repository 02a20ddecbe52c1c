"""The Alembic migrations produce SPEC §3's contract on both databases, idempotently."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from sync_assets.platform.migrate import current_revision, head_revision, upgrade
from sync_assets.platform.tables import metadata

# SPEC §3, column for column: other tools read and seed these.
CONTRACT = {
    "users": {"id", "email", "forgotten"},
    "activities": {"id", "title", "credit", "category", "provider", "future_learn_course_uuid"},
    "programmes": {"id", "slug", "title"},
    "programme_activity_groupings": {
        "id",
        "programme_id",
        "title",
        "required_for_completion",
        "sort_key",
    },
    "programme_activities": {"id", "programme_id", "activity_id", "programme_activity_grouping_id"},
    "user_programme_enrolments": {
        "id",
        "user_id",
        "programme_id",
        "state",
        "flagged",
        "auto_enrolled",
        "certificate_number",
        "pending_since",
        "created_at",
    },
    "future_learn_memberships": {
        "membership_uuid",
        "user_id",
        "external_learner_id",
        "learner_uuid",
        "fetched_at",
        "linked_at",
    },
    "achievements": {
        "id",
        "user_id",
        "activity_id",
        "programme_id",
        "progress",
        "state",
        "completed_at",
        "created_at",
        "updated_at",
    },
    "achievement_transitions": {
        "id",
        "achievement_id",
        "from_state",
        "to_state",
        "metadata",
        "created_at",
    },
    "notifications": {"id", "user_id", "kind", "created_at"},
}


def _schema_snapshot(engine: Engine) -> dict:
    inspector = sa.inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted(str(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            sorted(i["name"] for i in inspector.get_indexes(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


def test_upgrade_creates_every_contract_table_and_column(platform_engine: Engine) -> None:
    inspector = sa.inspect(platform_engine)
    for table, columns in CONTRACT.items():
        present = {column["name"] for column in inspector.get_columns(table)}
        assert columns <= present, f"{table} lacks {columns - present}"
    assert current_revision(platform_engine) == head_revision()


def test_contract_defaults(platform_engine: Engine) -> None:
    with platform_engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO users (id, email) VALUES ('u1', 'a@example.org')"))
        connection.execute(sa.text("INSERT INTO activities (id) VALUES ('a1')"))
        connection.execute(sa.text("INSERT INTO programmes (id, slug) VALUES ('p', 'p')"))
        connection.execute(
            sa.text("INSERT INTO achievements (user_id, activity_id) VALUES ('u1', 'a1')")
        )
        connection.execute(
            sa.text(
                "INSERT INTO user_programme_enrolments (user_id, programme_id) VALUES ('u1', 'p')"
            )
        )
        forgotten = connection.execute(sa.text("SELECT forgotten FROM users")).scalar_one()
        achievement = connection.execute(
            sa.text("SELECT progress, state, created_at, updated_at FROM achievements")
        ).one()
        enrolment = connection.execute(
            sa.text(
                "SELECT state, flagged, auto_enrolled, certificate_number, created_at"
                " FROM user_programme_enrolments"
            )
        ).one()
    assert not forgotten
    assert achievement[:2] == (0, "enrolled") and achievement[2] and achievement[3]
    assert enrolment[:4] == ("enrolled", False, False, None) and enrolment[4]


def test_second_upgrade_changes_nothing_and_keeps_data(platform_engine: Engine) -> None:
    with platform_engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO users (id, email) VALUES ('u1', 'a@example.org')"))
    before = _schema_snapshot(platform_engine)

    result = upgrade(platform_engine)

    assert not result.changed
    assert _schema_snapshot(platform_engine) == before
    with platform_engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT email FROM users")).scalar_one() == "a@example.org"
        )


def test_migrations_match_table_definitions(platform_engine: Engine) -> None:
    with platform_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_downgrade_to_empty_and_back(platform_engine: Engine) -> None:
    from alembic import command

    from sync_assets.platform.migrate import _config

    with platform_engine.begin() as connection:
        command.downgrade(_config(connection), "base")
    assert set(sa.inspect(platform_engine).get_table_names()) <= {"alembic_version"}
    assert upgrade(platform_engine).changed
    assert set(CONTRACT) <= set(sa.inspect(platform_engine).get_table_names())


BASE_ROWS = [
    "INSERT INTO users (id, email) VALUES ('u1', 'a@example.org')",
    "INSERT INTO activities (id, future_learn_course_uuid) VALUES ('a1', 'c-1')",
    "INSERT INTO programmes (id, slug) VALUES ('p1', 'primary-certificate')",
    "INSERT INTO programme_activity_groupings (programme_id, title) VALUES ('p1', 'All courses')",
    "INSERT INTO programme_activities (programme_id, activity_id) VALUES ('p1', 'a1')",
    "INSERT INTO user_programme_enrolments (user_id, programme_id, certificate_number)"
    " VALUES ('u1', 'p1', 7)",
    "INSERT INTO future_learn_memberships (membership_uuid) VALUES ('m1')",
    "INSERT INTO achievements (id, user_id, activity_id) VALUES (1, 'u1', 'a1')",
    "INSERT INTO notifications (user_id, kind) VALUES ('u1', 'csa_assessment_eligibility')",
    "INSERT INTO completion_events (achievement_id, user_id, activity_id) VALUES (1, 'u1', 'a1')",
]

DUPLICATES = {
    "users.id": "INSERT INTO users (id, email) VALUES ('u1', 'other@example.org')",
    "activities.future_learn_course_uuid": (
        "INSERT INTO activities (id, future_learn_course_uuid) VALUES ('a2', 'c-1')"
    ),
    "programmes.slug": "INSERT INTO programmes (id, slug) VALUES ('p2', 'primary-certificate')",
    "programme_activity_groupings (programme, title)": (
        "INSERT INTO programme_activity_groupings (programme_id, title)"
        " VALUES ('p1', 'All courses')"
    ),
    "programme_activities (programme, activity)": (
        "INSERT INTO programme_activities (programme_id, activity_id) VALUES ('p1', 'a1')"
    ),
    "user_programme_enrolments (user, programme)": (
        "INSERT INTO user_programme_enrolments (user_id, programme_id) VALUES ('u1', 'p1')"
    ),
    "future_learn_memberships.membership_uuid": (
        "INSERT INTO future_learn_memberships (membership_uuid) VALUES ('m1')"
    ),
    "achievements (user, activity)": (
        "INSERT INTO achievements (user_id, activity_id) VALUES ('u1', 'a1')"
    ),
    "notifications (user, kind)": (
        "INSERT INTO notifications (user_id, kind) VALUES ('u1', 'csa_assessment_eligibility')"
    ),
    "completion_events.achievement_id": (
        "INSERT INTO completion_events (achievement_id, user_id, activity_id)"
        " VALUES (1, 'u1', 'a1')"
    ),
}


@pytest.mark.parametrize("constraint", sorted(DUPLICATES))
def test_unique_constraint_rejects_duplicate(platform_engine: Engine, constraint: str) -> None:
    with platform_engine.begin() as connection:
        for statement in BASE_ROWS:
            connection.execute(sa.text(statement))
    with pytest.raises(sa.exc.IntegrityError), platform_engine.begin() as connection:
        connection.execute(sa.text(DUPLICATES[constraint]))


def test_certificate_number_is_never_reused_within_a_programme(platform_engine: Engine) -> None:
    with platform_engine.begin() as connection:
        for statement in BASE_ROWS[:6]:
            connection.execute(sa.text(statement))
        connection.execute(sa.text("INSERT INTO users (id, email) VALUES ('u2', 'b@example.org')"))
    with pytest.raises(sa.exc.IntegrityError), platform_engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO user_programme_enrolments (user_id, programme_id, certificate_number)"
                " VALUES ('u2', 'p1', 7)"
            )
        )


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO achievements (user_id, activity_id, state) VALUES ('u1', 'a1', 'finished')",
        "INSERT INTO achievements (user_id, activity_id, progress) VALUES ('u1', 'a1', 101)",
        "INSERT INTO achievements (user_id, activity_id) VALUES ('nobody', 'a1')",
    ],
    ids=["unknown-state", "progress-over-100", "unknown-user"],
)
def test_invalid_rows_are_refused(platform_engine: Engine, statement: str) -> None:
    with platform_engine.begin() as connection:
        for base in BASE_ROWS[:2]:
            connection.execute(sa.text(base))
    with pytest.raises(sa.exc.IntegrityError), platform_engine.begin() as connection:
        connection.execute(sa.text(statement))


SYNC_INDEXES = {
    "ix_users_lower_email",
    "ix_future_learn_memberships_user_id",
    "ix_achievements_activity_id",
    "ix_achievement_transitions_achievement_id",
    "ix_programme_activities_activity_id",
    "ix_user_programme_enrolments_programme_id_state_pending_since",
    "ix_completion_events_pending",
}


def test_indexes_the_sync_needs_exist(platform_engine: Engine) -> None:
    query = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index'",
        "postgresql": "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()",
    }[platform_engine.dialect.name]
    with platform_engine.connect() as connection:
        names = set(connection.execute(sa.text(query)).scalars())
    assert names >= SYNC_INDEXES
