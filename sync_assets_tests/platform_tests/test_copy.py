"""On PostgreSQL the sync's bulk writes go through COPY: what lands must be what VALUES writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets.platform import sync_store
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.platform.migrate import upgrade
from sync_assets.platform.tables import (
    achievement_transitions,
    achievements,
    completion_events,
    future_learn_memberships,
    user_email_keys,
    user_programme_enrolments,
    users,
)

pytestmark = pytest.mark.postgres

COURSE_ACTIVITY = "programming-101-an-introduction-to-python-for-educators"
PROGRAMME = "cs-accelerator"
# Microseconds must survive the CSV round trip, and the instant stay UTC-aware.
WHEN = datetime(2026, 11, 1, 2, 3, 4, 567891, tzinfo=UTC)

# Everything CSV, COPY's own escapes or a naive writer could get wrong.
HOSTILE = [
    "plain",
    "comma, inside",
    'a "quoted" word',
    "two\nlines",
    "carriage\r\nreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "tab\there",
    "  padded  ",
    "NULL",
    "ünïcödé ✓ 学",
    "",
]


@pytest.fixture
def engine(postgres_schema_url) -> Iterator[Engine]:
    engine = create_platform_engine(postgres_schema_url.render_as_string(hide_password=False))
    upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        connection.execute(
            sa.insert(users),
            [
                {"id": _user(i), "email": f'"{value}"@example.org', "forgotten": False}
                for i, value in enumerate(HOSTILE)
            ],
        )
    yield engine
    engine.dispose()


def _user(i: int) -> str:
    # Hostile user ids too: they are keys, foreign keys and ON CONFLICT targets.
    return f"user {i}, {HOSTILE[i]}"


def _first_sync() -> sync_store.CourseSyncBatch:
    count = len(HOSTILE)
    return sync_store.CourseSyncBatch(
        memberships=pl.DataFrame(
            {
                "membership_uuid": [f"m-{i}\n{value}" for i, value in enumerate(HOSTILE)],
                "user_id": [_user(i) if i % 3 else None for i in range(count)],
                "external_learner_id": [
                    value if i % 4 else None for i, value in enumerate(HOSTILE)
                ],
                "learner_uuid": HOSTILE,
                "fetched_at": [WHEN] * count,
                "linked_at": [WHEN if i % 3 else None for i in range(count)],
                "gone_at": [None] * count,
            }
        ),
        achievement_changes=pl.DataFrame(
            [
                {
                    "user_id": _user(i),
                    "activity_id": COURSE_ACTIVITY,
                    "programme_id": PROGRAMME if i % 2 else None,
                    "progress": 100 if i % 2 else 40,
                    "state": "complete" if i % 2 else "in_progress",
                    "completed_at": WHEN if i % 2 else None,
                    "previous_state": None,
                    "previous_progress": None,
                    "cause": json.dumps({"why": value, "nested": {"list": [value, None]}})
                    if i % 5
                    else None,
                }
                for i, value in enumerate(HOSTILE)
            ],
            schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
        ),
        programme_enrolments=pl.DataFrame(
            {
                "user_id": [_user(i) for i in range(count)],
                "programme_id": [PROGRAMME] * count,
                "auto_enrolled": [i % 2 == 0 for i in range(count)],
            }
        ),
        course_state=('course, "one"\n', count),
    )


def _next_night() -> pl.DataFrame:
    """Updates of the achievements written above: the staged plan goes through COPY as well."""
    return pl.DataFrame(
        [
            {
                "user_id": _user(i),
                "activity_id": COURSE_ACTIVITY,
                "programme_id": None,
                "progress": 100,
                "state": "complete",
                "completed_at": WHEN,
                "previous_state": "in_progress",
                "previous_progress": 40,
                "cause": json.dumps({"why": f"next {value}"}),
            }
            for i, value in enumerate(HOSTILE)
            if i % 2 == 0
        ],
        schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
    )


def _snapshot(connection: Connection) -> dict[str, list[tuple]]:
    """Every row the writes touched, by natural key (ids and write stamps differ between runs)."""
    a, t = achievements, achievement_transitions
    e, m = completion_events, future_learn_memberships
    enrol, keys = user_programme_enrolments, user_email_keys
    queries = {
        "memberships": sa.select(m),
        "achievements": sa.select(
            a.c.user_id,
            a.c.activity_id,
            a.c.programme_id,
            a.c.progress,
            a.c.state,
            a.c.completed_at,
        ),
        "transitions": sa.select(
            a.c.user_id, t.c.from_state, t.c.to_state, sa.cast(t.c.metadata, sa.Text)
        ).join(a, a.c.id == t.c.achievement_id),
        "events": sa.select(e.c.user_id, e.c.activity_id, e.c.programme_id, e.c.dagster_run_id),
        "enrolments": sa.select(
            enrol.c.user_id,
            enrol.c.programme_id,
            enrol.c.state,
            enrol.c.flagged,
            enrol.c.auto_enrolled,
        ),
        "email_keys": sa.select(keys),
    }
    return {
        name: sorted(tuple(row) for row in connection.execute(query))
        for name, query in queries.items()
    }


def _sync_and_read(
    engine: Engine,
) -> tuple[dict[str, list[tuple]], list[sync_store.AppliedChanges]]:
    """A first sync and a next night in one transaction, read back, then rolled back."""
    with engine.connect() as connection, connection.begin() as transaction:
        applied = [
            sync_store.write_course_sync(connection, _first_sync(), dagster_run_id='run "1",\n'),
            sync_store.apply_achievement_changes(connection, _next_night(), dagster_run_id="r2"),
        ]
        sync_store.refresh_email_keys(connection)
        snapshot = _snapshot(connection)
        transaction.rollback()
    return snapshot, applied


# 3 rows a COPY: the 13 hostile rows go in five slices, each its own COPY in the transaction.
@pytest.mark.parametrize("copy_rows", [sync_store.COPY_ROWS, 3])
def test_copy_writes_what_values_writes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, copy_rows: int
) -> None:
    monkeypatch.setattr(sync_store, "COPY_ROWS", copy_rows)
    copied, copied_counts = _sync_and_read(engine)
    # The same writes through multi-row VALUES, the path SQLite takes, on the same database.
    monkeypatch.setattr(sync_store, "_copies", lambda _connection: False)
    inserted, inserted_counts = _sync_and_read(engine)

    assert copied == inserted
    assert copied_counts == inserted_counts
    first, night = copied_counts
    assert (first.memberships, first.created, first.enrolments) == (13, 13, 13)
    assert night.updated == 7 and night.stale == 0

    # And both are the values given, not something mangled the same way twice.
    memberships = {row[0]: row for row in copied["memberships"]}
    for i, value in enumerate(HOSTILE):
        row = memberships[f"m-{i}\n{value}"]
        assert row[2] == (value if i % 4 else None)  # "" stays "", a missing id stays null
        assert row[3] == value
        assert row[4] == WHEN and row[4].utcoffset() is not None
    completed = [row for row in copied["achievements"] if row[4] == "complete"]
    assert {row[5] for row in completed} == {WHEN}
    assert sorted(row[4] for row in copied["enrolments"]) == sorted(i % 2 == 0 for i in range(13))
    causes = [json.loads(row[3]) for row in copied["transitions"]]
    escaped = HOSTILE[6]  # \N: the null of COPY's text format
    cause = {"why": escaped, "nested": {"list": [escaped, None]}, "dagster_run_id": 'run "1",\n'}
    assert cause in causes
    assert len(copied["email_keys"]) == len(HOSTILE)


def test_a_failed_copy_write_leaves_nothing(engine: Engine) -> None:
    """A COPY that breaks a constraint rolls the course's whole transaction back, as VALUES did."""
    batch = _first_sync()
    broken = batch.achievement_changes.with_columns(
        user_id=pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("nobody")).otherwise("user_id")
    )
    with pytest.raises(sa.exc.IntegrityError):
        sync_store.apply_course_sync(
            engine,
            sync_store.CourseSyncBatch(memberships=batch.memberships, achievement_changes=broken),
        )
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(achievements)).scalar() == 0
        )
        assert (
            connection.execute(
                sa.select(sa.func.count()).select_from(future_learn_memberships)
            ).scalar()
            == 0
        )
