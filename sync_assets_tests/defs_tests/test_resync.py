"""S2: resync chosen learners of a course, from the CLI; only they change."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import sqlalchemy as sa
from click.testing import CliRunner

from sync_assets.cli import main
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.pseudonyms import pseudonym
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

SLUG = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}


def resync(course: str, *users: str):
    args = ["resync", "--course", course, *[arg for user in users for arg in ("--user", user)]]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def outcomes(output: str) -> dict[str, str]:
    lines = [
        line.split(None, 1)
        for line in output.splitlines()
        if line.startswith("  ") and "[" not in line
    ]
    return {user: outcome.strip() for user, outcome in (line for line in lines if len(line) == 2)}


def a_course_with_learners(world: World) -> tuple[str, list[str]]:
    with world.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT a.future_learn_course_uuid, ach.user_id FROM achievements ach "
                "JOIN activities a ON a.id = ach.activity_id ORDER BY 1, 2"
            )
        ).all()
    course = rows[0][0]
    return course, [user for uuid, user in rows if uuid == course]


def enrolled_users(world: World, course: str) -> set[str]:
    runs = world.dataset.runs.filter(pl.col("course_uuid") == course)["run_uuid"]
    enrolled = world.dataset.enrolments.filter(pl.col("run_uuid").is_in(runs.implode()))
    joined = enrolled.join(world.dataset.memberships, on="membership_uuid")
    # External ids are user ids or emails in any case (R3).
    by_email = {
        e.lower(): user for user, e in world.dataset.users.select("id", "email").iter_rows()
    }
    return {by_email.get(external.lower(), external) for external in joined["external_learner_id"]}


def kept_by_dagster() -> bytes:
    """Every byte Dagster keeps of its runs under DAGSTER_HOME: event logs, op outputs, compute
    logs. All but the run records (history/runs.db): they keep each run's config, and the ids an
    operator gives are the resync's config, as a launch from the UI needs them."""
    home = Path(os.environ["DAGSTER_HOME"])
    return b"".join(
        path.read_bytes()
        for path in sorted(home.rglob("*"))
        if path.is_file() and not str(path.relative_to(home)).startswith("history/runs.db")
    )


def test_each_outcome_and_nobody_else_changes(world: World) -> None:
    assert world.sync().exit_code == 0
    course, _ = a_course_with_learners(world)
    progressed = [
        (r["user_id"], r["progress"])
        for r in world.table("achievements")
        if r["activity_id"] == SLUG[course]
    ]
    wrong = next(user for user, progress in progressed if progress > 0)
    right = next(user for user, _ in progressed if user != wrong)
    update = (
        "UPDATE achievements SET progress = 0, state = 'enrolled'"
        " WHERE user_id = :u AND activity_id = :a"
    )
    with world.engine.begin() as connection:
        # "My progress is wrong": the platform lost this learner's progress.
        connection.execute(sa.text(update), {"u": wrong, "a": SLUG[course]})
        connection.execute(
            sa.text("INSERT INTO users (id, email, forgotten) VALUES ('lonely', 'l@x.org', false)")
        )
    world.simulator.advance_day()  # others progress too, but a resync must not touch them
    linked = {r["user_id"] for r in world.table("future_learn_memberships") if r["user_id"]}
    linked_elsewhere = sorted(linked - enrolled_users(world, course))[0]
    right_before = next(
        r
        for r in world.table("achievements")
        if (r["user_id"], r["activity_id"]) == (right, SLUG[course])
    )
    before = {(r["user_id"], r["activity_id"]): r for r in world.table("achievements")}

    # The course named by its partition key, as the UI shows it (a uuid works too: below).
    result = resync(world.key(course), wrong, right, "lonely", linked_elsewhere)

    assert result.exit_code == 0, result.output
    got = outcomes(result.output)
    assert (got[wrong], got["lonely"], got[linked_elsewhere]) == (
        "updated",
        "not linked",
        "not enrolled",
    )
    assert got[right] in ("updated", "unchanged")  # the day may have moved this learner on
    after = {(r["user_id"], r["activity_id"]): r for r in world.table("achievements")}
    changed = {key for key in after if after[key] != before.get(key)}
    expected = {(wrong, SLUG[course])} | (
        {(right, SLUG[course])} if got[right] == "updated" else set()
    )
    assert changed == expected
    assert after[(wrong, SLUG[course])]["progress"] > 0
    if got[right] == "unchanged":
        assert after[(right, SLUG[course])] == right_before
    # What Dagster keeps of the run names the learners by pseudonym only (metadata, output).
    kept = kept_by_dagster()
    assert pseudonym("lonely").encode() in kept
    assert b"lonely" not in kept.replace(pseudonym("lonely").encode(), b"")


def test_none_enrolled_fails_naming_course_and_users(world: World) -> None:
    course = next(uuid for uuid in world.dataset.runs["course_uuid"] if uuid in SLUG)
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO users (id, email, forgotten) VALUES ('lonely', 'l@x.org', false)")
        )
    result = resync(course, "lonely", "lonely")
    assert result.exit_code != 0
    # The failure is read back from the event log, where users go by position and pseudonym.
    named = f"[#1 {pseudonym('lonely')}]"
    assert f"Could not find any enrolments for users {named} on course {course}" in result.output
    assert b"lonely" not in kept_by_dagster().replace(pseudonym("lonely").encode(), b"")
    assert not world.table("achievements")


@sqlite_only  # refused before any query
def test_bad_requests_fail_before_any_request(world: World) -> None:
    course = next(uuid for uuid in world.dataset.runs["course_uuid"] if uuid in SLUG)
    user = world.dataset.users["id"][0]
    for args, message in [
        (("not-a-uuid", user), "not-a-uuid: neither a course uuid nor a course partition's key"),
        (("00000000-0000-4000-8000-000000000000", user), "is not a known course"),
        ((course, "two words"), "malformed user ids"),
        ((course, "no-such-user"), "no platform users with ids ['no-such-user']"),
    ]:
        result = resync(*args)
        assert result.exit_code != 0 and message in result.output, result.output
    assert world.simulator.requests() == 0


def test_only_the_chosen_learners_links_are_written(world: World) -> None:
    course = next(uuid for uuid in world.dataset.runs["course_uuid"] if uuid in SLUG)
    runs = world.dataset.runs.filter(pl.col("course_uuid") == course)["run_uuid"]
    memberships = world.dataset.enrolments.filter(pl.col("run_uuid").is_in(runs.implode()))
    owners = memberships.join(world.dataset.memberships, on="membership_uuid").filter(
        pl.col("external_learner_id").is_in(world.dataset.users["id"].implode())
    )
    chosen = owners["external_learner_id"][0]

    result = resync(course, chosen)

    assert result.exit_code == 0, result.output
    rows = world.table("future_learn_memberships")
    assert {r["user_id"] for r in rows if r["user_id"]} == {chosen}
    # Everyone else's memberships were fetched once and kept, unlinked, for the nightly sync.
    assert len(rows) == memberships["membership_uuid"].n_unique()
    assert {r["user_id"] for r in world.table("achievements")} == {chosen}


def test_a_database_error_in_a_resync_is_one_line_without_personal_data(world: World) -> None:
    """Any error, not only the resync's own: a platform constraint refusing the write (on
    PostgreSQL with the learner's email in its message and DETAIL) fails the run in one line."""
    from .test_explain import a_learner_with_progress, personal_values

    assert world.sync().exit_code == 0
    course, activity, user = a_learner_with_progress(world)
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE achievements SET progress = 0 WHERE user_id = :u AND activity_id = :a"),
            {"u": user, "a": activity},
        )
        if world.engine.dialect.name == "sqlite":
            connection.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON achievements "
                    "BEGIN SELECT RAISE(ABORT, 'achievement refused'); END"
                )
            )
        else:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ DECLARE e text; BEGIN "
                    "SELECT email INTO e FROM users WHERE id = NEW.user_id; "
                    "RAISE EXCEPTION 'achievement refused for %', e USING DETAIL = e; "
                    "END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                sa.text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON achievements "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
    result = resync(world.key(course), user)
    assert result.exit_code != 0
    assert "resync failed: " in result.output
    kept = kept_by_dagster() + result.output.encode()
    assert b"[SQL:" not in kept and b"DETAIL" not in kept
    for value in personal_values(world, user):
        assert value.encode() not in kept
