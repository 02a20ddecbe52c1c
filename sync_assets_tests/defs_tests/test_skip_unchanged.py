"""Skipping unchanged courses (issue 21) changes the cost of a night, never its result.

A course whose reports are the ones it was last synced from, and whose platform side did not
change since, is skipped. Here the platform changes behind the sync's back on courses whose
reports did not change (a new user who can link, an achievement reset by the platform): those
courses must not be skipped. The proof of equality is a full recomputation right after: it finds
nothing left to do, table for table, and the outcome is also the independent reading of SPEC §4.
"""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.simulator.datasets import GeneratedDataset, generate

from .conftest import MEMBERSHIP, REPORT, World
from .test_explain import a_learner_with_progress, explain
from .test_sync_end_to_end import expected_achievements


def _statuses(output: str, world: World) -> dict[str, str]:
    """Each course's status in the summary table, by course uuid."""
    by_key = {key: uuid for key, uuid in world.partitions().items()}
    statuses = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in by_key:
            statuses[by_key[cells[0]]] = next(
                cell for cell in cells if cell in ("applied", "unchanged", "refused", "failed")
            )
    return statuses


def _unchanged_courses(
    today: GeneratedDataset, tomorrow: GeneratedDataset, versions_today: dict[str, int]
) -> list[str]:
    """Known courses none of whose reports change from today to tomorrow."""
    catalogue = {c["future_learn_course_uuid"] for c in load_catalogue()}
    runs = today.runs.filter(pl.col("course_uuid").is_in(list(catalogue)))
    changed = {
        run
        for run in runs["run_uuid"]
        if tomorrow.versions.get(run, 0) != versions_today.get(run, 0)
    }
    return sorted(
        course
        for course, rows in runs.group_by("course_uuid")
        for course in [course[0]]
        if not set(rows["run_uuid"]) & changed
    )


def test_second_sync_asks_only_conditionally_skips_every_course_and_writes_nothing(
    world: World,
) -> None:
    """(Also the end-to-end test's "second sync writes nothing and asks only conditionally",
    merged here: the same two syncs.)"""
    assert world.sync().exit_code == 0
    before = world.snapshot()
    courses = len(world.partitions())
    world.simulator.reset_counts()

    result = world.sync()

    assert result.exit_code == 0, result.output
    assert f"{courses} skipped as unchanged" in result.output
    assert set(_statuses(result.output, world).values()) == {"unchanged"}
    assert world.snapshot() == before
    # Every request conditional, every answer 304 (no report anew), no membership asked again.
    assert world.simulator.requests(MEMBERSHIP) == 0
    assert world.simulator.requests() == world.simulator.requests(status=304)
    assert world.simulator.requests(REPORT, 304) == world.dataset.known_run_count()
    # The skipped courses' last reports stay stored: explain still answers from them.
    course, _activity, user = a_learner_with_progress(world)
    explained = explain("--course", course, "--user", user)
    assert explained.exit_code == 0, explained.output
    assert "consistent with FutureLearn" in explained.output


def test_next_day_with_skipping_equals_a_full_recomputation(world: World) -> None:
    # Which courses' reports tomorrow leaves as they are (the day is deterministic).
    tomorrow = generate("tiny", seed=11)
    today_versions = dict(tomorrow.versions)
    tomorrow.advance_day()
    unchanged = _unchanged_courses(world.dataset, tomorrow, today_versions)
    assert len(unchanged) >= 2, "the dataset must leave some courses' reports unchanged"
    new_user_course, reset_course = unchanged[0], unchanged[1]
    activity_of = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
    # A teacher on one of them is not on the platform yet: their memberships stay unlinked.
    course_runs = world.dataset.runs.filter(pl.col("course_uuid") == new_user_course)["run_uuid"]
    externals = world.dataset.memberships.join(
        world.dataset.enrolments.filter(pl.col("run_uuid").is_in(course_runs.implode())),
        on="membership_uuid",
    )["external_learner_id"]
    newcomer = (
        world.dataset.users.filter(~pl.col("forgotten") & pl.col("id").is_in(externals.implode()))
        .sort("id")
        .row(0, named=True)
    )
    with world.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM users WHERE id = :id"), {"id": newcomer["id"]})

    assert world.sync().exit_code == 0
    before = world.achievements()
    world.simulator.advance_day()

    # The platform, not the sync, changes things on two courses whose reports did not change:
    # (1) the teacher joins the platform, and can link now;
    # (2) an operator resets one achievement of the other course to nothing.
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO users (id, email, forgotten) VALUES (:id, :email, false)"),
            {"id": newcomer["id"], "email": newcomer["email"]},
        )
        reset_user, progress = connection.execute(
            sa.text(
                "SELECT user_id, progress FROM achievements WHERE activity_id = :activity "
                "AND state = 'in_progress' ORDER BY user_id LIMIT 1"
            ),
            {"activity": activity_of[reset_course]},
        ).one()
        _reset_achievement(connection, reset_user, activity_of[reset_course])

    result = world.sync()

    assert result.exit_code == 0, result.output
    statuses = _statuses(result.output, world)
    assert statuses[new_user_course] == "applied"
    assert statuses[reset_course] == "applied"
    # A new user who could link moves every course on (linking is global): all recomputed.
    assert "unchanged" not in statuses.values()
    achievements = world.achievements()
    assert (newcomer["id"], activity_of[new_user_course]) in achievements
    assert achievements[(reset_user, activity_of[reset_course])] == (progress, "in_progress")

    # The night after, nothing changed: every course skipped, nothing written.
    after = world.snapshot()
    quiet = world.sync()
    assert quiet.exit_code == 0, quiet.output
    assert set(_statuses(quiet.output, world).values()) == {"unchanged"}
    assert world.snapshot() == after

    # Only the reset achievement changes again, on a course whose reports did not change: that
    # course alone is recomputed, the others are skipped.
    with world.engine.begin() as connection:
        _reset_achievement(connection, reset_user, activity_of[reset_course])
    partly = world.sync()
    assert partly.exit_code == 0, partly.output
    statuses = _statuses(partly.output, world)
    assert statuses.pop(reset_course) == "applied"
    assert set(statuses.values()) == {"unchanged"}
    assert world.achievements()[(reset_user, activity_of[reset_course])] == (
        progress,
        "in_progress",
    )

    # A full recomputation finds nothing the skipping syncs left undone, table for table.
    settled = world.snapshot()
    full = world.sync("--recompute-unchanged")
    assert full.exit_code == 0, full.output
    assert "skipped as unchanged" not in full.output
    assert world.snapshot() == settled
    # And the result is SPEC §4's, read independently (the newcomer is in dataset.users).
    assert world.achievements() == expected_achievements(world.dataset, before)


def _reset_achievement(connection: sa.Connection, user_id: int, activity_id: int) -> None:
    """What an operator does by hand: the achievement back to nothing, stamped as a change."""
    connection.execute(
        sa.text(
            "UPDATE achievements SET progress = 0, state = 'enrolled', "
            "updated_at = CURRENT_TIMESTAMP "
            "WHERE user_id = :user AND activity_id = :activity"
        ),
        {"user": user_id, "activity": activity_id},
    )
