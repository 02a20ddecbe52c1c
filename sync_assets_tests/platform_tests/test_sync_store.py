"""The sync's data access: set-based reads, bulk writes, one transaction per course."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets.platform import change_tracking, sync_store
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.platform.tables import (
    achievement_transitions,
    achievements,
    completion_events,
    future_learn_memberships,
    user_email_keys,
    user_programme_enrolments,
    users,
)

COURSE_ACTIVITY = "programming-101-an-introduction-to-python-for-educators"
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def engine(platform_engine: Engine) -> Engine:
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
    return platform_engine


def add_users(engine: Engine, rows: list[dict]) -> None:
    # executemany takes its columns from the first row: give every row every column.
    with engine.begin() as connection:
        connection.execute(sa.insert(users), [{"forgotten": False} | row for row in rows])


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def changes(rows: list[dict]) -> pl.DataFrame:
    defaults = {
        "programme_id": None,
        "completed_at": None,
        "previous_state": None,
        "previous_progress": None,
        "cause": json.dumps({"source": "test"}),
    }
    return pl.DataFrame(
        [defaults | row for row in rows], schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA
    )


def test_known_courses_are_the_catalogue(engine: Engine) -> None:
    with engine.connect() as connection:
        known = sync_store.known_courses(connection)
    assert known.height == 33
    assert known["course_uuid"].n_unique() == 33
    assert "c9fb59cc-6393-4a29-8136-7020128ca879" in known["course_uuid"].to_list()


def test_memberships_to_look_up_skips_fetched_and_gone(engine: Engine) -> None:
    with engine.begin() as connection:
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {
                    "membership_uuid": ["fetched", "gone"],
                    "external_learner_id": ["someone", None],
                    "fetched_at": [T0, None],
                    "gone_at": [None, T0],
                }
            ),
        )
        to_fetch = sync_store.memberships_to_look_up(
            connection, ["new-2", "fetched", "gone", "new-1", "new-1"]
        )
    assert to_fetch == ["new-1", "new-2"]


def test_linked_memberships_ignore_forgotten_users(engine: Engine) -> None:
    add_users(
        engine,
        [
            {"id": "u1", "email": "one@example.org"},
            {"id": "u2", "email": "two@example.org", "forgotten": True},
        ],
    )
    with engine.begin() as connection:
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {
                    "membership_uuid": ["m1", "m2", "m3"],
                    "user_id": ["u1", "u2", None],
                    "external_learner_id": ["u1", "two@example.org", "stranger@example.org"],
                    "fetched_at": [T0, T0, T0],
                }
            ),
        )
        states = sync_store.membership_states(connection, ["m1", "m2", "m3"])
    links = sync_store.usable_links(states).sort("membership_uuid")
    unlinked = sync_store.unlinked_answered(states)
    assert links.rows() == [("m1", "u1")]
    assert unlinked.rows() == [("m3", "stranger@example.org")]


def test_relinking_keeps_what_was_fetched(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "one@example.org"}])
    with engine.begin() as connection:
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {"membership_uuid": ["m1"], "external_learner_id": ["u1"], "fetched_at": [T0]}
            ),
        )
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame({"membership_uuid": ["m1"], "user_id": ["u1"], "linked_at": [T0]}),
        )
        row = connection.execute(sa.select(future_learn_memberships)).mappings().one()
    assert (row["user_id"], row["external_learner_id"]) == ("u1", "u1")
    assert row["fetched_at"] is not None and row["linked_at"] is not None


def test_users_matching_by_id_or_email_ignoring_case_and_wildcards(engine: Engine) -> None:
    add_users(
        engine,
        [
            {"id": "42", "email": "Ada.Lovelace@Example.org"},
            {"id": "43", "email": "a_b@example.org"},
            {"id": "44", "email": "100%@example.org"},
        ],
    )
    with engine.begin() as connection:
        assert sync_store.refresh_email_keys(connection) == 3
        found = sync_store.users_matching(
            connection, ["ada.lovelace@EXAMPLE.org", "axb@example.org", "100x@example.org"]
        )
        by_id = sync_store.users_matching(connection, ["43"])
    # `_` and `%` are ordinary characters: neither a_b nor 100% matches.
    assert sorted(found["id"].to_list()) == ["42"]
    assert by_id["id"].to_list() == ["43"]


def test_users_matching_folds_unicode_case_on_every_database(engine: Engine) -> None:
    add_users(
        engine,
        [
            {"id": "u1", "email": "JOSÉ@Example.org"},
            {"id": "u2", "email": "maría@example.org"},
            {"id": "u3", "email": "STRASSE@example.org"},
        ],
    )
    with engine.begin() as connection:
        sync_store.refresh_email_keys(connection)
        found = sync_store.users_matching(
            connection, ["josé@example.org", "MARÍA@EXAMPLE.ORG", "straße@example.org"]
        )
    assert sorted(found["id"].to_list()) == ["u1", "u2", "u3"]


def test_users_matching_joins_each_chunk_to_its_keys_with_the_keys_table_analyzed(
    engine: Engine,
) -> None:
    """Linking reads its candidate users a chunk of keys at a time, right after a first sync (or
    a bulk import of users) wrote every email key. On `large` (920k users, PostgreSQL) one
    `id IN (…) OR id IN (…)` was tested user by user against the chunk's email matches (a
    SubPlan), and a keys table without statistics looked common to the planner: minutes a
    chunk. Each chunk is now joined to its keys, and the keys table is analyzed once written."""
    count = sync_store.ANALYZE_AFTER_ROWS + 100
    add_users(engine, [{"id": f"u{i}", "email": f"User{i}@Example.org"} for i in range(count)])
    with engine.begin() as connection:
        assert sync_store.refresh_email_keys(connection) == count
    executed: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:
        executed.append((statement, parameters))

    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        sa.event.listen(engine, "before_cursor_execute", keep)
        try:
            found = sync_store.users_matching(connection, ["u7", "user9@EXAMPLE.org", "nobody"])
        finally:
            sa.event.remove(engine, "before_cursor_execute", keep)
        plans = [
            " / ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(
                    ("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + sql, params
                )
            )
            for sql, params in executed
        ]
        known_rows = (
            connection.exec_driver_sql(
                "SELECT reltuples FROM pg_class WHERE oid = 'user_email_keys'::regclass"
            ).scalar()
            if postgres
            else None
        )
    assert sorted(found["id"].to_list()) == ["u7", "u9"]
    assert plans
    for plan in plans:
        if postgres:
            assert "SubPlan" not in plan, plan
        else:  # SQLite: from each key to its user by index, never a scan of every user
            assert "SCAN users" not in plan, plan
    if postgres:  # never analyzed, reltuples is -1: the planner guesses
        assert known_rows == pytest.approx(count, rel=0.1)


def test_email_keys_follow_changed_emails_and_write_nothing_when_unchanged(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "old@example.org"}])
    with engine.begin() as connection:
        assert sync_store.refresh_email_keys(connection) == 1
        assert sync_store.refresh_email_keys(connection) == 0
        connection.execute(sa.update(users).values(email="NEW@example.org"))
        assert sync_store.refresh_email_keys(connection) == 1
        assert sync_store.users_matching(connection, ["old@example.org"]).is_empty()
        assert sync_store.users_matching(connection, ["new@EXAMPLE.org"])["id"].to_list() == ["u1"]


def _email_keys(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        statement = sa.select(user_email_keys.c.user_id, user_email_keys.c.email)
        return {user: email for user, email in connection.execute(statement)}


def test_email_keys_drop_deleted_and_forgotten_users_emails(engine: Engine) -> None:
    """Erasure: the sync's copy of an email goes when the user is deleted or forgotten."""
    add_users(
        engine,
        [
            {"id": "u1", "email": "stays@example.org"},
            {"id": "u2", "email": "deleted@example.org"},
            {"id": "u3", "email": "forgotten-later@example.org"},
            {"id": "u4", "email": "forgotten-before@example.org", "forgotten": True},
        ],
    )
    with engine.begin() as connection:
        sync_store.refresh_email_keys(connection)
    # A user forgotten before the first refresh is never copied.
    assert _email_keys(engine) == {
        "u1": "stays@example.org",
        "u2": "deleted@example.org",
        "u3": "forgotten-later@example.org",
    }
    with engine.begin() as connection:
        connection.execute(sa.delete(users).where(users.c.id == "u2"))
        connection.execute(sa.update(users).where(users.c.id == "u3").values(forgotten=True))
        assert sync_store.refresh_email_keys(connection) == 2
        assert sync_store.refresh_email_keys(connection) == 0
    assert _email_keys(engine) == {"u1": "stays@example.org"}


def test_the_linking_state_erases_emails_and_moves_on_only_when_a_deletion_can_link(
    engine: Engine,
) -> None:
    """The sync's one refresh of the keys (before it skips any course) removes a deleted user's
    email whether or not linking changes; it moves the generation on (every course recomputed)
    only when the deletion can change a link: here it leaves an ambiguous email to one user."""
    add_users(
        engine,
        [
            {"id": "u1", "email": "shared@example.org"},
            {"id": "u2", "email": "SHARED@example.org"},
            {"id": "u3", "email": "alone@example.org"},
        ],
    )
    with engine.begin() as connection:
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {
                    "membership_uuid": ["m1"],
                    "external_learner_id": ["shared@example.org"],
                    "fetched_at": [T0],
                }
            ),
        )
    generation = change_tracking.refresh_linking_state(engine)
    assert set(_email_keys(engine)) == {"u1", "u2", "u3"}

    with engine.begin() as connection:
        connection.execute(sa.delete(users).where(users.c.id == "u3"))
    assert change_tracking.refresh_linking_state(engine) == generation  # courses may be skipped
    assert set(_email_keys(engine)) == {"u1", "u2"}  # and the email is gone all the same

    with engine.begin() as connection:
        connection.execute(sa.delete(users).where(users.c.id == "u2"))
    assert change_tracking.refresh_linking_state(engine) == generation + 1
    assert _email_keys(engine) == {"u1": "shared@example.org"}


def test_a_night_run_uses_its_checks_generation_and_the_next_check_sees_what_changed_since(
    engine: Engine,
) -> None:
    """A night's run links under the generation its check left, without checking again: a user
    who joins during the night, and could link a membership fetched tonight, is seen by the next
    night's check, which moves the generation on (every course stamped with it recomputed)."""
    assert change_tracking.checked_generation(engine) is None  # never checked: the run checks
    with engine.begin() as connection:
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {
                    "membership_uuid": ["m1"],
                    "external_learner_id": ["late@example.org"],
                    "fetched_at": [T0],
                }
            ),
        )
    generation = change_tracking.refresh_linking_state(engine)
    add_users(engine, [{"id": "u1", "email": "Late@Example.org"}])
    assert change_tracking.checked_generation(engine) == generation
    assert _email_keys(engine) == {}  # nothing read or written: the check's state as it was
    assert change_tracking.refresh_linking_state(engine) == generation + 1
    assert change_tracking.checked_generation(engine) == generation + 1


def test_a_link_the_platform_makes_moves_or_removes_moves_the_generation_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The links are summed up a chunk at a time (two rows here): a link made, moved or removed
    by the platform moves the generation on; links the sync makes and accounts for, in the
    same transaction, do not."""
    monkeypatch.setattr(sync_store, "READ_ROWS", 2)
    add_users(engine, [{"id": f"u{n}", "email": f"t{n}@example.org"} for n in range(1, 5)])

    def link(values: dict) -> None:
        with engine.begin() as connection:
            connection.execute(sa.insert(future_learn_memberships), [values])

    for n in range(1, 4):
        link({"membership_uuid": f"m{n}", "user_id": f"u{n}"})
    generation = change_tracking.refresh_linking_state(engine)
    assert change_tracking.refresh_linking_state(engine) == generation

    made = pl.DataFrame({"membership_uuid": ["m9"], "user_id": ["u4"]})
    with engine.begin() as connection:  # as the sync writes a course's new links
        connection.execute(sa.insert(future_learn_memberships), made.to_dicts())
        change_tracking.account_links(connection, made)
    assert change_tracking.refresh_linking_state(engine) == generation

    platform_changes = [
        sa.insert(future_learn_memberships).values(membership_uuid="m5", user_id="u4"),
        sa.update(future_learn_memberships)
        .where(future_learn_memberships.c.membership_uuid == "m1")
        .values(user_id="u2"),
        sa.delete(future_learn_memberships).where(
            future_learn_memberships.c.membership_uuid == "m3"
        ),
    ]
    for change in platform_changes:
        with engine.begin() as connection:
            connection.execute(change)
        generation += 1
        assert change_tracking.refresh_linking_state(engine) == generation


def test_a_course_committing_its_links_during_a_refresh_does_not_move_the_generation_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping runs: one run's course commits its links (and accounts for them) while the
    next run refreshes the linking state. The refresh must read the stored digest and the links
    as of one moment: a course committed between the two read as a platform change, and the
    next night recomputed every course synced before it."""
    add_users(engine, [{"id": f"u{n}", "email": f"t{n}@example.org"} for n in range(1, 3)])
    generation = change_tracking.refresh_linking_state(engine)
    add_users(engine, [{"id": "u3", "email": "new@example.org"}])  # a key to write: locked path
    made = pl.DataFrame({"membership_uuid": ["m1"], "user_id": ["u1"]})
    committed = threading.Event()

    def course_commit() -> None:  # as another run's course writes its new links
        with engine.begin() as connection:
            connection.execute(sa.insert(future_learn_memberships), made.to_dicts())
            change_tracking.account_links(connection, made)
        committed.set()

    stale_email_keys = sync_store.stale_email_keys
    reads: list[Connection] = []
    writers: list[threading.Thread] = []

    def between_the_digest_and_the_links(connection: Connection) -> pl.DataFrame:
        # Read after the stored digest and before the links; the second time is the refresh's
        # read under its lock: the other run's course commits there if nothing holds it back
        # (the write lock on SQLite, the digest's row lock on PostgreSQL).
        reads.append(connection)
        if len(reads) == 2:
            writers.append(threading.Thread(target=course_commit))
            writers[0].start()
            committed.wait(timeout=2)
        return stale_email_keys(connection)

    monkeypatch.setattr(sync_store, "stale_email_keys", between_the_digest_and_the_links)
    assert change_tracking.refresh_linking_state(engine) == generation
    assert len(reads) == 2 and writers  # the refresh took its locked path
    writers[0].join(timeout=60)
    assert committed.is_set()
    assert change_tracking.refresh_linking_state(engine) == generation


def test_linked_memberships_are_never_looked_up_nor_re_pointed(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "one@example.org"}, {"id": "u2", "email": "2@x"}])
    with engine.begin() as connection:
        # Linked by the platform: no fetched_at, no external id.
        sync_store.upsert_memberships(
            connection, pl.DataFrame({"membership_uuid": ["m1"], "user_id": ["u1"]})
        )
        to_fetch = sync_store.memberships_to_look_up(connection, ["m1", "m2"])
        sync_store.upsert_memberships(
            connection,
            pl.DataFrame(
                {
                    "membership_uuid": ["m1"],
                    "user_id": ["u2"],
                    "external_learner_id": ["u2"],
                    "fetched_at": [T0],
                    "linked_at": [T0],
                }
            ),
        )
        row = connection.execute(sa.select(future_learn_memberships)).mappings().one()
    assert to_fetch == ["m2"]
    assert (row["user_id"], row["linked_at"]) == ("u1", None)


def test_apply_changes_creates_updates_and_records_transitions(engine: Engine) -> None:
    add_users(engine, [{"id": f"u{i}", "email": f"u{i}@example.org"} for i in range(3)])
    with engine.begin() as connection:
        first = sync_store.apply_achievement_changes(
            connection,
            changes(
                [
                    {
                        "user_id": "u0",
                        "activity_id": COURSE_ACTIVITY,
                        "progress": 0,
                        "state": "enrolled",
                    },
                    {
                        "user_id": "u1",
                        "activity_id": COURSE_ACTIVITY,
                        "progress": 30,
                        "state": "in_progress",
                    },
                ]
            ),
            dagster_run_id="run-1",
        )
    # A new achievement starts enrolled: only u1's enrolled → in_progress is a transition.
    assert (first.created, first.updated, first.transitions) == (2, 0, 1)
    assert first.by_state == {"in_progress": 1}

    with engine.begin() as connection:
        second = sync_store.apply_achievement_changes(
            connection,
            changes(
                [
                    {
                        "user_id": "u1",
                        "activity_id": COURSE_ACTIVITY,
                        "progress": 97,
                        "state": "complete",
                        "completed_at": T0,
                        "previous_state": "in_progress",
                        "previous_progress": 30,
                        "cause": json.dumps({"source": "test", "run_uuid": "r1"}),
                    },
                    {
                        "user_id": "u0",
                        "activity_id": COURSE_ACTIVITY,
                        "progress": 5,
                        "state": "enrolled",
                        "previous_state": "enrolled",
                        "previous_progress": 0,
                    },
                ]
            ),
            dagster_run_id="run-2",
        )
        current = sync_store.achievements_for_course(connection, COURSE_ACTIVITY)
        transitions = (
            connection.execute(
                sa.select(achievement_transitions).order_by(achievement_transitions.c.id)
            )
            .mappings()
            .all()
        )
    assert (second.created, second.updated, second.transitions, second.completion_events) == (
        0,
        2,
        1,
        1,
    )
    assert dict(current.select("user_id", "progress").iter_rows()) == {"u0": 5, "u1": 97}
    assert current.filter(pl.col("user_id") == "u1")["completed_at"].item() == T0
    last = transitions[-1]
    assert (last["from_state"], last["to_state"]) == ("in_progress", "complete")
    assert last["metadata"] == {"source": "test", "run_uuid": "r1", "dagster_run_id": "run-2"}


def _count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _start_in_progress(engine: Engine, user: str, progress: int = 30) -> None:
    start = changes(
        [
            {
                "user_id": user,
                "activity_id": COURSE_ACTIVITY,
                "progress": progress,
                "state": "in_progress",
            }
        ]
    )
    with engine.begin() as connection:
        sync_store.apply_achievement_changes(connection, start)


def _completion(user: str, planned_from_progress: int = 30) -> pl.DataFrame:
    return changes(
        [
            {
                "user_id": user,
                "activity_id": COURSE_ACTIVITY,
                "progress": 100,
                "state": "complete",
                "completed_at": T0,
                "previous_state": "in_progress",
                "previous_progress": planned_from_progress,
            }
        ]
    )


def test_a_retried_completion_writes_no_second_event(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "u1@example.org"}])
    _start_in_progress(engine, "u1")
    results = []
    for _ in range(2):  # the same plan applied twice, as by two overlapping syncs
        with engine.begin() as connection:
            results.append(sync_store.apply_achievement_changes(connection, _completion("u1")))
    assert [(r.updated, r.transitions, r.completion_events, r.stale) for r in results] == [
        (1, 1, 1, 0),
        (0, 0, 0, 1),
    ]
    assert _count(engine, completion_events) == 1
    assert _count(engine, achievement_transitions) == 2  # enrolled → in_progress → complete


def test_a_change_planned_from_a_state_since_changed_writes_nothing(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "u1@example.org"}, {"id": "u2", "email": "u2@x"}])
    _start_in_progress(engine, "u1")
    _start_in_progress(engine, "u2")
    plan = pl.concat([_completion("u1"), _completion("u2")])
    with engine.begin() as connection:  # another writer moves u1 on after the plan was made
        connection.execute(
            sa.update(achievements).where(achievements.c.user_id == "u1").values(progress=45)
        )
    with engine.begin() as connection:
        applied = sync_store.apply_achievement_changes(connection, plan)
        current = sync_store.achievements_for_course(connection, COURSE_ACTIVITY)
    assert (applied.updated, applied.stale, applied.completion_events) == (1, 1, 1)
    assert dict(current.select("user_id", "state").iter_rows()) == {
        "u1": "in_progress",
        "u2": "complete",
    }


def test_a_new_achievement_someone_else_created_first_is_not_overwritten(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "u1@example.org"}])
    _start_in_progress(engine, "u1", progress=40)
    planned_as_new = changes(
        [{"user_id": "u1", "activity_id": COURSE_ACTIVITY, "progress": 10, "state": "in_progress"}]
    )
    with engine.begin() as connection:
        applied = sync_store.apply_achievement_changes(connection, planned_as_new)
        current = sync_store.achievements_for_course(connection, COURSE_ACTIVITY)
    assert (applied.created, applied.stale, applied.transitions) == (0, 1, 0)
    assert current["progress"].to_list() == [40]


def _learners(count: int, prefix: str = "") -> tuple[list[dict], sync_store.CourseSyncBatch]:
    ids = [f"{prefix}user-{i}" for i in range(count)]
    batch = sync_store.CourseSyncBatch(
        memberships=pl.DataFrame(
            {
                "membership_uuid": [f"{prefix}m-{i}" for i in range(count)],
                "user_id": ids,
                "external_learner_id": ids,
                "fetched_at": [T0] * count,
                "linked_at": [T0] * count,
            }
        ),
        achievement_changes=changes(
            [
                {
                    "user_id": user,
                    "activity_id": COURSE_ACTIVITY,
                    "progress": 60 + i % 40,
                    "state": "complete",
                    "completed_at": T0,
                }
                for i, user in enumerate(ids)
            ]
        ),
        programme_enrolments=pl.DataFrame(
            {
                "user_id": ids,
                "programme_id": ["cs-accelerator"] * count,
                "auto_enrolled": [True] * count,
            }
        ),
    )
    return [{"id": user, "email": f"{user}@example.org"} for user in ids], batch


def test_statements_do_not_grow_with_learners(engine: Engine) -> None:
    counts = []
    for size, prefix in ((20, "small-"), (3_000, "large-")):
        people, batch = _learners(size, prefix)
        add_users(engine, people)
        with counting_statements(engine) as statements:
            applied = sync_store.apply_course_sync(engine, batch, dagster_run_id="r")
        assert applied.created == size and applied.completion_events == size
        assert applied.enrolments == size and applied.memberships == size
        counts.append(len(statements))
    # PostgreSQL stages each bulk write: CREATE, INSERT … SELECT, DROP (the COPY itself goes
    # under SQLAlchemy's cursor events). Either way the count does not depend on the learners.
    limit = 16 if engine.dialect.name == "postgresql" else 12
    assert counts[0] == counts[1] <= limit, counts


def test_course_batch_is_one_transaction(engine: Engine) -> None:
    people, batch = _learners(5)
    add_users(engine, people[:4])  # the fifth learner's user is missing: the batch must fail
    with pytest.raises(sa.exc.IntegrityError):
        sync_store.apply_course_sync(engine, batch)
    with engine.connect() as connection:
        for table in (future_learn_memberships, user_programme_enrolments, completion_events):
            assert connection.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
        assert sync_store.achievements_for_course(connection, COURSE_ACTIVITY).is_empty()


def test_nothing_to_write_touches_nothing(engine: Engine) -> None:
    with counting_statements(engine) as statements:
        applied = sync_store.apply_course_sync(engine, sync_store.CourseSyncBatch())
    assert statements == [] and applied.rows_written == 0


def test_achievements_for_some_users(engine: Engine) -> None:
    people, batch = _learners(30)
    add_users(engine, people)
    sync_store.apply_course_sync(engine, batch)
    with engine.connect() as connection:
        some = sync_store.achievements_for_course(
            connection, COURSE_ACTIVITY, ["user-3", "user-7", "nobody"]
        )
        everyone = sync_store.achievements_for_course(connection, COURSE_ACTIVITY)
    assert sorted(some["user_id"].to_list()) == ["user-3", "user-7"]
    assert everyone.height == 30
    assert everyone.schema["completed_at"] == pl.Datetime("us", "UTC")


def test_existing_enrolments_are_kept(engine: Engine) -> None:
    add_users(engine, [{"id": "u1", "email": "u1@example.org"}])
    with engine.begin() as connection:
        connection.execute(
            sa.insert(user_programme_enrolments),
            [{"user_id": "u1", "programme_id": "cs-accelerator", "state": "unenrolled"}],
        )
        written = sync_store.ensure_programme_enrolments(
            connection,
            pl.DataFrame(
                {"user_id": ["u1"], "programme_id": ["cs-accelerator"], "auto_enrolled": [True]}
            ),
        )
        enrolments = sync_store.programme_enrolments(connection, ["u1"])
    assert written == 0
    assert enrolments.select("state", "auto_enrolled").rows() == [("unenrolled", False)]


def test_activity_programmes_and_structure(engine: Engine) -> None:
    with engine.connect() as connection:
        programmes = sync_store.activity_programmes(connection, [COURSE_ACTIVITY])
        structure = sync_store.programme_structure(connection)
    assert sorted(programmes["programme_slug"]) == ["cs-accelerator", "primary-certificate"]
    primary = structure.filter(pl.col("programme_slug") == "primary-certificate")
    assert primary["grouping_title"].n_unique() == 4
    assert primary["required_for_completion"].unique().to_list() == [1]


def test_sqlite_bulk_writes_store_exactly_what_sqlalchemy_would(tmp_path) -> None:
    """The SQLite write path through the driver's executemany stores every value as SQLAlchemy's
    own path does, byte for byte: times (with and without microseconds, null), booleans, text."""
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.migrate import upgrade

    times = [datetime(2026, 11, 1, 2, 0, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)]
    frame = pl.DataFrame(
        {
            "membership_uuid": ["m1", "m2", "m3"],
            "external_learner_id": ["ÄÖ.ß@example.org", None, "x'); DROP TABLE users; --"],
            "learner_uuid": [None, "l2", "l3"],
            "fetched_at": [times[0], times[1], None],
            "gone_at": [None, None, times[1]],
        },
        schema_overrides={"fetched_at": sync_store.UTC_TIME, "gone_at": sync_store.UTC_TIME},
    )
    people = pl.DataFrame(
        {"id": ["u1", "u2"], "email": ["a@b.c", "d@e.f"], "forgotten": [True, False]}
    )
    stored = {}
    for way in ("driver", "sqlalchemy"):
        engine = create_platform_engine(f"sqlite:///{tmp_path / way}.sqlite3")
        upgrade(engine)
        with engine.begin() as connection:
            for table, rows in ((future_learn_memberships, frame), (users, people)):
                statement = sa.insert(table)
                if way == "driver":
                    assert sync_store._execute_many(connection, statement, rows)
                else:
                    connection.execute(statement, rows.to_dicts())
            stored[way] = [
                connection.exec_driver_sql(
                    f"SELECT {', '.join(f'typeof({c}), {c}' for c in columns)} FROM {name}"
                    " ORDER BY 2"
                ).all()
                for name, columns in (
                    ("future_learn_memberships", frame.columns),
                    ("users", people.columns),
                )
            ]
        engine.dispose()
    assert stored["driver"] == stored["sqlalchemy"]
    # Read back through SQLAlchemy, the times are the frame's.
    engine = create_platform_engine(f"sqlite:///{tmp_path / 'driver'}.sqlite3")
    with engine.connect() as connection:
        read = sync_store.stored_memberships(connection, ["m1", "m2", "m3"]).sort("membership_uuid")
    assert read["fetched_at"].to_list() == frame["fetched_at"].to_list()


def test_sqlite_bulk_writes_leave_statements_with_returning_to_sqlalchemy(tmp_path) -> None:
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.migrate import upgrade

    engine = create_platform_engine(f"sqlite:///{tmp_path / 'p'}.sqlite3")
    upgrade(engine)
    rows = pl.DataFrame({"id": ["u1"], "email": ["a@b.c"], "forgotten": [False]})
    with engine.begin() as connection:
        statement = sa.insert(users).returning(users.c.id)
        assert not sync_store._execute_many(connection, statement, rows)
        assert connection.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 0


def test_a_read_of_texts_integers_and_booleans_is_what_sqlalchemy_reads(engine: Engine) -> None:
    """`read_frame` reads such rows straight from the driver: the same frame as through
    SQLAlchemy's rows, for keys bound as JSON, an IN list, a LIKE and booleans (SQLite: 0/1),
    with hostile texts; a read with a datetime column or parameter goes through SQLAlchemy."""
    texts = ["plain", "it's", 'a "quote"', "100%", "two\nlines", "ünïcode", "%(x)s", "?"]
    add_users(
        engine,
        [
            {"id": f"u{n}", "email": f"{text}@example.org", "forgotten": n % 2 == 0}
            for n, text in enumerate(texts)
        ],
    )
    schema = {"id": pl.String, "email": pl.String, "forgotten": pl.Boolean}
    with engine.connect() as connection:
        statements = [
            sa.select(users.c.id, users.c.email, users.c.forgotten).where(
                users.c.id.in_(sync_store.listed(connection, ["u0", "u3", "u7", "nobody"]))
            ),
            sa.select(users.c.id, users.c.email, users.c.forgotten).where(
                users.c.id.in_(["u1", "u2"]), users.c.email.like("%@example.org")
            ),
            sa.select(users.c.id, users.c.email, users.c.forgotten).where(
                users.c.forgotten.is_(True)
            ),
            sa.select(users.c.id, sa.func.length(users.c.email).label("email"), users.c.forgotten),
        ]
        for statement in statements:
            statement = statement.order_by(users.c.id)
            through_sqlalchemy = pl.DataFrame(
                list(connection.execute(statement)),
                schema=schema | ({"email": pl.Int64} if statement is statements[-1] else {}),
                orient="row",
            )
            assert sync_store._driver_statement(connection, statement) is not None  # the driver's
            read = sync_store.read_frame(connection, statement, through_sqlalchemy.schema)
            assert read.equals(through_sqlalchemy), (read, through_sqlalchemy)
            assert not read.is_empty()
        assert sync_store.read_frame(
            connection,
            sa.select(users.c.id).where(users.c.id == "u4"),
            {"id": pl.String},
        )["id"].to_list() == ["u4"]
