"""Certificate rules C1–C4 and R12 on a real platform database, exactly once."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_assets.platform import certificate_store, sync_store
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.platform.tables import (
    achievements,
    completion_events,
    notifications,
    user_programme_enrolments,
    users,
)
from sync_assets.rules import certificates as rules
from sync_assets.sync import steps

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
PRIMARY_COURSE = "teaching-programming-in-primary-schools"  # FutureLearn, primary only
PRIMARY_PLATFORM = [
    "primary-certificate-face-to-face-course",
    "primary-certificate-community-activity",
    "primary-certificate-assessment",
]
CSA_COURSE = "how-computers-work-demystifying-computation"  # FutureLearn, CSA only, 20 online
CSA_SECOND_COURSE = "programming-102-think-like-a-computer-scientist"
CSA_F2F = ["cs-accelerator-face-to-face-1", "cs-accelerator-face-to-face-2"]  # 10 credit each


@pytest.fixture
def engine(platform_engine: Engine) -> Engine:
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
        connection.execute(
            sa.insert(users),
            [{"id": f"u{i}", "email": f"u{i}@example.org", "forgotten": False} for i in range(60)],
        )
    return platform_engine


def enrol(engine: Engine, user: str, programme: str, state: str = "enrolled", **extra) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.insert(user_programme_enrolments),
            [
                {"user_id": user, "programme_id": programme, "state": state, "flagged": False}
                | extra
            ],
        )


def done_on_platform(engine: Engine, user: str, activities: list[str], programme: str) -> None:
    """Completions that are not FutureLearn's: no events (the platform recorded them)."""
    with engine.begin() as connection:
        connection.execute(
            sa.insert(achievements),
            [
                {
                    "user_id": user,
                    "activity_id": a,
                    "programme_id": programme,
                    "progress": 100,
                    "state": "complete",
                }
                for a in activities
            ],
        )


def complete(engine: Engine, user: str, activity: str, programme: str) -> None:
    """An achievement the sync completes, with its completion event (the outbox)."""
    change = pl.DataFrame(
        [
            {
                "user_id": user,
                "activity_id": activity,
                "programme_id": programme,
                "progress": 100,
                "state": "complete",
                "completed_at": NOW,
                "previous_state": None,
                "previous_progress": None,
                "cause": json.dumps({"source": "test"}),
            }
        ],
        schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
    )
    with engine.begin() as connection:
        sync_store.apply_achievement_changes(connection, change, dagster_run_id="sync-run")


def pending_events(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return certificate_store.pending_event_ids(connection)


def enrolment(engine: Engine, user: str, programme: str) -> dict:
    with engine.connect() as connection:
        return dict(
            connection.execute(
                sa.select(user_programme_enrolments).where(
                    user_programme_enrolments.c.user_id == user,
                    user_programme_enrolments.c.programme_id == programme,
                )
            )
            .mappings()
            .one()
        )


def outcomes(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        return dict(
            connection.execute(sa.select(completion_events.c.id, completion_events.c.outcome)).all()
        )


def count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# --- C1 ----------------------------------------------------------------------------------------


def test_c1_requirement_met_moves_enrolment_to_pending(engine: Engine) -> None:
    enrol(engine, "u1", "primary-certificate")
    done_on_platform(engine, "u1", PRIMARY_PLATFORM, "primary-certificate")
    complete(engine, "u1", PRIMARY_COURSE, "primary-certificate")

    batch = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)

    assert batch.moved_to_pending == 1 and batch.handled == 1
    moved = enrolment(engine, "u1", "primary-certificate")
    assert moved["state"] == "pending" and moved["pending_since"].replace(tzinfo=UTC) == NOW
    assert list(outcomes(engine).values()) == [rules.MOVED_TO_PENDING]


def test_c1_an_unmet_grouping_changes_nothing(engine: Engine) -> None:
    enrol(engine, "u1", "primary-certificate")
    done_on_platform(engine, "u1", PRIMARY_PLATFORM[:2], "primary-certificate")  # no assessment
    complete(engine, "u1", PRIMARY_COURSE, "primary-certificate")

    batch = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)

    assert batch.moved_to_pending == 0 and batch.details == {"1 grouping(s) short": 1}
    assert enrolment(engine, "u1", "primary-certificate")["state"] == "enrolled"
    assert list(outcomes(engine).values()) == [rules.REQUIREMENT_NOT_MET]


def test_c1_completions_for_another_programme_do_not_count(engine: Engine) -> None:
    enrol(engine, "u1", "primary-certificate")
    done_on_platform(engine, "u1", PRIMARY_PLATFORM[:2], "primary-certificate")
    done_on_platform(engine, "u1", ["primary-certificate-assessment"], "secondary-certificate")
    complete(engine, "u1", PRIMARY_COURSE, "primary-certificate")
    certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)
    assert list(outcomes(engine).values()) == [rules.REQUIREMENT_NOT_MET]


@pytest.mark.parametrize("state", ["pending", "complete", "unenrolled", None])
def test_c1_enrolment_not_enrolled_changes_nothing(engine: Engine, state: str | None) -> None:
    if state:
        enrol(engine, "u1", "primary-certificate", state=state)
    done_on_platform(engine, "u1", PRIMARY_PLATFORM, "primary-certificate")
    complete(engine, "u1", PRIMARY_COURSE, "primary-certificate")

    batch = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)

    assert batch.moved_to_pending == 0
    assert list(outcomes(engine).values()) == [rules.ENROLMENT_NOT_ENROLLED]
    if state:
        assert enrolment(engine, "u1", "primary-certificate")["state"] == state


# --- C3 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("face_to_face", "online", "expected"),
    [
        (CSA_F2F, [], rules.NOTIFIED),  # face-to-face 20
        (CSA_F2F[:1], [CSA_SECOND_COURSE], rules.NOTIFIED),  # 10 + online 20 (+ the event's 20)
        (CSA_F2F[:1], [], rules.NOTIFIED),  # 10 + the completed course's 20 online
        ([], [CSA_SECOND_COURSE], rules.NOT_ENOUGH_CREDIT),  # online only
    ],
    ids=["f2f-20", "f2f-10-online-40", "f2f-10-online-20", "online-only"],
)
def test_c3_credit_rules(engine: Engine, face_to_face: list, online: list, expected: str) -> None:
    enrol(engine, "u1", "cs-accelerator")
    done_on_platform(engine, "u1", face_to_face + online, "cs-accelerator")
    complete(engine, "u1", CSA_COURSE, "cs-accelerator")

    batch = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)

    assert list(outcomes(engine).values()) == [expected]
    assert (
        count(engine, notifications) == batch.notifications_written == (expected == rules.NOTIFIED)
    )


def test_c3_credit_from_face_to_face_alone_below_ten_is_not_enough(engine: Engine) -> None:
    enrol(engine, "u1", "cs-accelerator")
    complete(engine, "u1", CSA_COURSE, "cs-accelerator")  # online 20, face-to-face 0
    certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)
    assert list(outcomes(engine).values()) == [rules.NOT_ENOUGH_CREDIT]


def test_c3_already_notified(engine: Engine) -> None:
    enrol(engine, "u1", "cs-accelerator")
    done_on_platform(engine, "u1", CSA_F2F, "cs-accelerator")
    with engine.begin() as connection:
        connection.execute(
            sa.insert(notifications), [{"user_id": "u1", "kind": rules.CSA_NOTIFICATION}]
        )
    complete(engine, "u1", CSA_COURSE, "cs-accelerator")
    certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)
    assert list(outcomes(engine).values()) == [rules.ALREADY_NOTIFIED]
    assert count(engine, notifications) == 1


@pytest.mark.parametrize("state", ["complete", "unenrolled", None])
def test_c3_inactive_csa_enrolment(engine: Engine, state: str | None) -> None:
    if state:
        enrol(engine, "u1", "cs-accelerator", state=state)
    done_on_platform(engine, "u1", CSA_F2F, "cs-accelerator")
    complete(engine, "u1", CSA_COURSE, "cs-accelerator")
    certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)
    assert list(outcomes(engine).values()) == [rules.CSA_ENROLMENT_INACTIVE]
    assert count(engine, notifications) == 0


def run_concurrently(task, workers: int = 4) -> list:
    """Start `task` in `workers` threads at the same instant; re-raise any failure."""
    results, errors = [], []
    start = threading.Barrier(workers)

    def worker() -> None:
        start.wait()
        try:
            results.append(task())
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


# --- exactly once ---------------------------------------------------------------------------------


def many_ready_users(engine: Engine, number: int) -> None:
    for i in range(number):
        enrol(engine, f"u{i}", "primary-certificate")
        done_on_platform(engine, f"u{i}", PRIMARY_PLATFORM, "primary-certificate")
        complete(engine, f"u{i}", PRIMARY_COURSE, "primary-certificate")
        enrol(engine, f"u{i}", "cs-accelerator")
        done_on_platform(engine, f"u{i}", CSA_F2F, "cs-accelerator")
        complete(engine, f"u{i}", CSA_COURSE, "cs-accelerator")


def effects(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        pending = connection.execute(
            sa.select(sa.func.count()).where(user_programme_enrolments.c.state == "pending")
        ).scalar_one()
    return pending, count(engine, notifications)


def test_the_same_events_twice_leave_one_effect_each(engine: Engine) -> None:
    many_ready_users(engine, 5)
    events = pending_events(engine)
    first = certificate_store.handle_completion_events(engine, events, now=NOW)
    second = certificate_store.handle_completion_events(engine, events, now=NOW)
    assert (first.handled, first.moved_to_pending, first.notifications_written) == (10, 5, 5)
    assert (second.handled, second.skipped) == (0, 10)
    assert effects(engine) == (5, 5)


def test_a_crash_between_effects_and_marking_leaves_nothing_then_a_retry_applies_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    many_ready_users(engine, 3)
    events = pending_events(engine)

    def crash(*_args, **_kwargs) -> None:
        raise RuntimeError("worker died")

    with monkeypatch.context() as patch:
        patch.setattr(certificate_store, "_mark_handled", crash)
        with pytest.raises(RuntimeError, match="worker died"):
            certificate_store.handle_completion_events(engine, events, now=NOW)
    assert effects(engine) == (0, 0) and pending_events(engine) == events

    retried = certificate_store.handle_completion_events(engine, events, now=NOW)
    assert retried.handled == 6 and effects(engine) == (3, 3)
    assert not pending_events(engine)


def test_overlapping_runs_leave_one_effect_per_event(engine: Engine) -> None:
    many_ready_users(engine, 20)
    events = pending_events(engine)
    results = run_concurrently(
        lambda: certificate_store.handle_completion_events(engine, events, now=NOW)
    )
    assert sum(batch.handled for batch in results) == len(events) == 40
    assert sum(batch.moved_to_pending for batch in results) == 20
    assert sum(batch.notifications_written for batch in results) == 20
    assert effects(engine) == (20, 20)


# --- C2 ----------------------------------------------------------------------------------------


def pending_since(engine: Engine, user: str, programme: str, days_ago: float, **extra) -> None:
    enrol(
        engine,
        user,
        programme,
        state="pending",
        pending_since=NOW - timedelta(days=days_ago),
        **extra,
    )


def test_c2_seven_days_later_completes_with_the_next_number(engine: Engine) -> None:
    pending_since(engine, "u1", "primary-certificate", 7)
    pending_since(engine, "u2", "primary-certificate", 6.9)
    pending_since(engine, "u3", "primary-certificate", 8, flagged=True)

    certified = certificate_store.complete_due_certificates(engine, now=NOW)

    assert certified.completed == {"primary-certificate": [1]}
    assert enrolment(engine, "u1", "primary-certificate")["state"] == "complete"
    assert enrolment(engine, "u1", "primary-certificate")["certificate_number"] == 1
    assert enrolment(engine, "u2", "primary-certificate")["state"] == "pending"
    flagged = enrolment(engine, "u3", "primary-certificate")
    assert (flagged["state"], flagged["certificate_number"]) == ("pending", None)
    assert certified.refused and "flagged" in certified.refused[0]


def test_c2_numbers_are_consecutive_per_programme_and_continue(engine: Engine) -> None:
    enrol(engine, "u0", "primary-certificate", state="complete", certificate_number=41)
    for i in range(1, 4):
        pending_since(engine, f"u{i}", "primary-certificate", 10 + i)
        pending_since(engine, f"u{i}", "secondary-certificate", 10 + i)
    certified = certificate_store.complete_due_certificates(engine, now=NOW)
    assert certified.completed == {
        "primary-certificate": [42, 43, 44],
        "secondary-certificate": [1, 2, 3],
    }
    # The earliest pending gets the first number.
    assert enrolment(engine, "u3", "primary-certificate")["certificate_number"] == 42
    assert certificate_store.complete_due_certificates(engine, now=NOW).completed == {}


def test_c2_concurrent_workers_never_skip_or_reuse_a_number(engine: Engine) -> None:
    for i in range(50):
        pending_since(engine, f"u{i}", "secondary-certificate", 30 - i * 0.01)
    run_concurrently(lambda: certificate_store.complete_due_certificates(engine, now=NOW))
    with engine.connect() as connection:
        numbers = sorted(
            connection.execute(
                sa.select(user_programme_enrolments.c.certificate_number).where(
                    user_programme_enrolments.c.programme_id == "secondary-certificate"
                )
            ).scalars()
        )
    assert numbers == list(range(1, 51))


# --- is there certificate work (what a night asks before making the daily job's run) -----------


def ready_for_c1(engine: Engine) -> None:
    enrol(engine, "u1", "primary-certificate")
    done_on_platform(engine, "u1", PRIMARY_PLATFORM, "primary-certificate")
    complete(engine, "u1", PRIMARY_COURSE, "primary-certificate")


def handled_already(engine: Engine) -> None:
    ready_for_c1(engine)
    certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)


WORK = {  # what is on the platform → whether the daily job has something to do
    "nothing": (lambda engine: None, False),
    "a pending completion event": (ready_for_c1, True),
    "its event handled, pending since now": (handled_already, False),
    "pending seven days": (lambda e: pending_since(e, "u1", "primary-certificate", 7), True),
    "pending 6.9 days": (lambda e: pending_since(e, "u1", "primary-certificate", 6.9), False),
    "due but flagged": (
        lambda e: pending_since(e, "u1", "primary-certificate", 8, flagged=True),
        False,
    ),
    "due flagged and due not": (
        lambda e: [
            pending_since(e, "u1", "primary-certificate", 8, flagged=True),
            pending_since(e, "u2", "secondary-certificate", 9),
        ],
        True,
    ),
    "complete long ago": (
        lambda e: enrol(
            e,
            "u1",
            "primary-certificate",
            state="complete",
            certificate_number=1,
            pending_since=NOW - timedelta(days=30),
        ),
        False,
    ),
}


@pytest.mark.parametrize("scenario", list(WORK))
def test_certificate_work_is_what_the_daily_job_then_does(engine: Engine, scenario: str) -> None:
    arrange, expected = WORK[scenario]
    arrange(engine)

    with engine.connect() as connection:
        work = certificate_store.has_certificate_work(connection, now=NOW)
    # The daily job's two steps, at the same moment: did either change anything?
    handled = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)
    certified = certificate_store.complete_due_certificates(engine, now=NOW)
    did_something = handled.handled > 0 or bool(certified.completed)

    assert (work, did_something) == (expected, expected)
    with engine.connect() as connection:  # and once done, nothing is left
        assert not certificate_store.has_certificate_work(connection, now=NOW)


# --- R12 against the database -----------------------------------------------------------------


def _latest(user: str, ratio: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [user],
            "run_uuid": ["run"],
            "membership_uuid": [f"m-{user}"],
            "activated_at": [NOW],
            "deactivated_at": [None],
            "steps_completed_ratio": [ratio],
        },
        schema_overrides={
            "activated_at": pl.Datetime("us", "UTC"),
            "deactivated_at": pl.Datetime("us", "UTC"),
        },
    )


def test_r12_auto_enrols_on_csa_and_keeps_the_exception(engine: Engine) -> None:
    shared = "teaching-physical-computing-with-raspberry-pi-and-python"  # CSA and secondary
    enrol(engine, "u2", "secondary-certificate")
    linked = pl.DataFrame(schema=steps.LINKED_SCHEMA)
    for user, activity in (("u1", CSA_COURSE), ("u2", shared)):
        with engine.begin() as connection:
            latest = _latest(user, 0.5)
            batch, _ = steps.plan_course(connection, "course", activity, latest, linked, NOW)
            sync_store.write_course_sync(connection, batch)
    assert enrolment(engine, "u1", "cs-accelerator")["auto_enrolled"] is True
    with engine.connect() as connection:
        u2_programmes = set(
            connection.execute(
                sa.select(user_programme_enrolments.c.programme_id).where(
                    user_programme_enrolments.c.user_id == "u2"
                )
            ).scalars()
        )
        u2_programme = connection.execute(
            sa.select(achievements.c.programme_id).where(achievements.c.user_id == "u2")
        ).scalar_one()
    assert u2_programmes == {"secondary-certificate"}  # an active enrolment on another programme
    assert u2_programme == "secondary-certificate"  # R11: the programme the user is enrolled on


def test_more_events_than_sqlite_binds_in_one_statement_are_all_handled(engine: Engine) -> None:
    """A first sync of a large platform completes ~100k enrolments at once (found by the
    benchmark on `large`: one `IN` over every event broke SQLite's limit on bound variables).
    This build of SQLite allows 250,000; SQLite's own default since 3.32 is 32,766: use that."""
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_default_variable_limit)
        engine.dispose()
    learners = 40_000
    with engine.begin() as connection:
        connection.execute(
            sa.insert(users),
            [
                {"id": f"x{i}", "email": f"x{i}@example.org", "forgotten": False}
                for i in range(learners)
            ],
        )
    changes = pl.DataFrame(
        {
            "user_id": [f"x{i}" for i in range(learners)],
            "activity_id": CSA_COURSE,
            "programme_id": "cs-accelerator",
            "progress": 100,
            "state": "complete",
            "completed_at": NOW,
            "previous_state": None,
            "previous_progress": None,
            "cause": json.dumps({"source": "test"}),
        },
        schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
    )
    with engine.begin() as connection:
        sync_store.apply_achievement_changes(connection, changes, dagster_run_id="sync-run")

    batch = certificate_store.handle_completion_events(engine, pending_events(engine), now=NOW)

    assert batch.handled == learners and batch.skipped == 0
    assert batch.outcomes == {rules.CSA_ENROLMENT_INACTIVE: learners}  # no CSA enrolment
    assert pending_events(engine) == []


def _sqlite_default_variable_limit(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
