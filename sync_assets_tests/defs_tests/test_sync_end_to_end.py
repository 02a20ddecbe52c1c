"""The sync end to end: `sync-assets sync` → Dagster → Partners API over loopback → platform DB.

Outcomes are checked in the platform tables against an independent, plain-Python reading of
SPEC §4 (not the polars rules under test), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import Engine

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.simulator.datasets import GeneratedDataset

from .conftest import MEMBERSHIP, REPORT, World, make_world

# --- an independent reading of SPEC §4 --------------------------------------------------------

ALLOWED = {
    "enrolled": {"in_progress", "complete", "dropped"},
    "in_progress": {"complete", "dropped"},
    "dropped": {"enrolled", "in_progress", "complete"},
    "complete": set(),
}


def caseless(text: str) -> str:
    """Unicode default caseless matching (canonical): NFD, case fold, then one normal form."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def expected_owners(dataset: GeneratedDataset) -> dict[str, str]:
    """R3–R4: membership → user."""
    users = [u for u in dataset.users.iter_rows(named=True) if not u["forgotten"]]
    by_id = {u["id"]: u["id"] for u in users}
    by_email: dict[str, list[str]] = {}
    for user in users:
        by_email.setdefault(caseless(user["email"]), []).append(user["id"])
    owner = {}
    for membership in dataset.memberships.iter_rows(named=True):
        external = membership["external_learner_id"]
        if external in by_id:
            owner[membership["membership_uuid"]] = by_id[external]
        elif len(by_email.get(caseless(external), [])) == 1:
            owner[membership["membership_uuid"]] = by_email[caseless(external)][0]
    return owner


def expected_achievements(
    dataset: GeneratedDataset,
    before: dict[tuple[str, str], tuple[int, str]] | None = None,
    owner: dict[str, str] | None = None,
) -> dict[tuple[str, str], tuple[int, str]]:
    activity_of = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
    owner = expected_owners(dataset) if owner is None else owner
    runs = {run["run_uuid"]: run for run in dataset.runs.iter_rows(named=True)}
    best: dict[tuple[str, str], dict] = {}
    for enrolment in dataset.enrolments.iter_rows(named=True):
        run = runs[enrolment["run_uuid"]]
        user = owner.get(enrolment["membership_uuid"])
        if user is None or run["course_uuid"] not in activity_of:
            continue
        key = (user, activity_of[run["course_uuid"]])
        rank = (enrolment["activated_at"], enrolment["steps_completed_ratio"], run["start_time"])
        held = best.get(key)
        if (
            held is None
            or rank > held["rank"]
            or (rank == held["rank"] and enrolment["run_uuid"] < held["run_uuid"])
        ):
            best[key] = {**enrolment, "rank": rank}
    expected = dict(before or {})
    for key, enrolment in best.items():
        progress = math.floor(enrolment["steps_completed_ratio"] * 100)
        old_progress, old_state = (before or {}).get(key, (0, "enrolled"))
        if old_state == "complete":
            continue
        if enrolment["deactivated_at"] is not None and progress < 60:
            target = "dropped"
        else:
            target = "enrolled" if progress == 0 else "in_progress" if progress < 60 else "complete"
        state = target if target in ALLOWED[old_state] else old_state
        expected[key] = (max(progress, old_progress), state)
    return expected


def memberships_in_known_reports(dataset: GeneratedDataset) -> set[str]:
    known = {c["future_learn_course_uuid"] for c in load_catalogue()}
    runs = dataset.runs.filter(pl.col("course_uuid").is_in(list(known)))["run_uuid"]
    return set(
        dataset.enrolments.filter(pl.col("run_uuid").is_in(runs.implode()))["membership_uuid"]
    )


# --- scenarios ---------------------------------------------------------------------------------


def _assert_first_sync(world: World, result: Result) -> None:
    assert result.exit_code == 0, result.output

    assert world.achievements() == expected_achievements(world.dataset)
    achievements = world.table("achievements")
    changed_state = [row for row in achievements if row["state"] != "enrolled"]
    assert len(world.table("achievement_transitions")) == len(changed_state)
    complete = {row["id"] for row in achievements if row["state"] == "complete"}
    assert {row["achievement_id"] for row in world.table("completion_events")} == complete
    csa = world.table("user_programme_enrolments")
    assert csa and all(
        row["auto_enrolled"] and row["programme_id"] == "cs-accelerator" for row in csa
    )
    # Every request once: the runs list (partitions, then the run), each report, each membership.
    simulator = world.simulator
    assert simulator.requests(REPORT, 200) == world.dataset.known_run_count()
    assert simulator.requests(MEMBERSHIP) == len(memberships_in_known_reports(world.dataset))
    assert simulator.requests("course_runs") == 2
    assert len(world.table("future_learn_memberships")) == simulator.requests(MEMBERSHIP)
    assert "Unknown courses (R1), not synced (2)" in result.output


def _assert_next_day_writes_only_the_changes(world: World) -> None:
    before = world.achievements()
    rows_before = {(r["user_id"], r["activity_id"]): r for r in world.table("achievements")}
    world.simulator.advance_day()
    world.simulator.reset_counts()

    result = world.sync()

    assert result.exit_code == 0, result.output
    after = world.achievements()
    assert after == expected_achievements(world.dataset, before)
    for key, row in rows_before.items():
        if after[key] == before[key]:
            current = next(
                r for r in world.table("achievements") if (r["user_id"], r["activity_id"]) == key
            )
            assert current["updated_at"] == row["updated_at"]  # untouched, not rewritten
    new = memberships_in_known_reports(world.dataset) - {
        r["membership_uuid"] for r in world.table("future_learn_memberships")
    }
    assert not new  # every new membership was fetched
    assert world.simulator.requests(MEMBERSHIP) <= world.dataset.memberships.height


def _assert_rerun_of_one_course_touches_only_it(world: World) -> None:
    before = world.achievements()
    world.simulator.advance_day()
    world.simulator.reset_counts()
    catalogue = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
    course = sorted(set(world.dataset.runs["course_uuid"]) & set(catalogue))[0]

    result = world.sync("--course", course)

    assert result.exit_code == 0, result.output
    after = world.achievements()
    expected = expected_achievements(world.dataset, before)
    for key in after.keys() | expected.keys():
        if key[1] == catalogue[course]:
            assert after.get(key) == expected.get(key)
        else:
            assert after.get(key) == before.get(key)
    course_runs = set(world.dataset.runs.filter(pl.col("course_uuid") == course)["run_uuid"])
    assert world.simulator.requests(REPORT) == len(course_runs)


def test_first_sync_then_a_next_day_then_a_rerun_of_one_course(world: World) -> None:
    """Three nights of one world, each checked as a scenario of its own (each was a test that
    began with the same first sync): the first sync; the next day writes only the changes; a
    day later, a rerun of one course touches only it."""
    _assert_first_sync(world, world.sync())
    _assert_next_day_writes_only_the_changes(world)
    _assert_rerun_of_one_course_touches_only_it(world)


def test_dry_run_writes_nothing_but_what_it_fetched_and_the_real_run_asks_nothing_again(
    world: World,
) -> None:
    """(Also the linking test's "a dry run keeps what it fetched and the real run asks nothing
    again", merged here: the same dry run.)"""
    result = world.sync("--dry-run")
    assert result.exit_code == 0, result.output
    assert "Dry run: no link, progress or certificate was written" in result.output
    snapshot = world.snapshot()
    memberships = snapshot.pop("future_learn_memberships")
    assert all(not rows for rows in snapshot.values())
    # What the API said is kept (R2: fetched once ever), and nothing is linked.
    assert memberships and all(row["user_id"] is None for row in memberships)
    assert all(row["fetched_at"] or row["gone_at"] for row in memberships)
    assert f"The {len(memberships)} memberships looked up were kept" in result.output
    total = next(line for line in result.output.splitlines() if line.startswith("total"))
    assert int(total.split()[4]) == len(expected_achievements(world.dataset))  # "created"
    # Nothing applied, so nothing materialised: the asset is not made fresh by a dry run.
    assert set(world.partition_status("activity_progress").values()) == {None}
    assert set(world.partition_status("latest_enrolments").values()) == {"MATERIALIZED"}

    # The real run after it: what the dry run fetched is not asked for again (R2).
    world.simulator.reset_counts()
    real = world.sync()
    assert real.exit_code == 0, real.output
    assert world.simulator.requests(MEMBERSHIP) == 0
    assert world.achievements() == expected_achievements(world.dataset)


def _install_failure(engine: Engine, activity: str) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                sa.text(
                    "CREATE TRIGGER fail_course BEFORE INSERT ON achievements "
                    f"WHEN NEW.activity_id = '{activity}' "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )
            )
        else:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION fail_course() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.activity_id = '{activity}' THEN RAISE EXCEPTION 'injected failure'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                sa.text(
                    "CREATE TRIGGER fail_course BEFORE INSERT ON achievements "
                    "FOR EACH ROW EXECUTE FUNCTION fail_course()"
                )
            )


def test_a_course_failing_mid_write_is_rolled_back_and_a_rerun_converges(world: World) -> None:
    """(Also the linking test's "memberships of a failed course are kept and never fetched
    again", merged here: the same two syncs.)"""
    expected = expected_achievements(world.dataset)
    activity = sorted({activity for _, activity in expected})[0]
    _install_failure(world.engine, activity)

    result = world.sync()

    assert result.exit_code != 0
    assert "injected failure" in result.output
    assert "courses not applied (see above); the other" in result.output
    after = world.achievements()
    assert not [key for key in after if key[1] == activity]
    assert after == {key: value for key, value in expected.items() if key[1] != activity}
    # What was fetched is kept, the failed course's memberships too (R2).
    fetched = {row["membership_uuid"] for row in world.table("future_learn_memberships")}
    assert fetched == memberships_in_known_reports(world.dataset)

    with world.engine.begin() as connection:
        connection.execute(
            sa.text(
                "DROP TRIGGER fail_course"
                + (" ON achievements" if world.engine.dialect.name == "postgresql" else "")
            )
        )
    world.simulator.reset_counts()
    assert world.sync().exit_code == 0
    assert world.simulator.requests(MEMBERSHIP) == 0  # none asked for again
    assert world.achievements() == expected


def test_circuit_breaker_refuses_a_shrunk_report(world: World) -> None:
    assert world.sync().exit_code == 0
    catalogue = {c["future_learn_course_uuid"] for c in load_catalogue()}
    sizes = (
        world.dataset.enrolments.join(world.dataset.runs, on="run_uuid")
        .filter(pl.col("course_uuid").is_in(list(catalogue)))
        .group_by("course_uuid")
        .len()
        .sort("len", descending=True)
    )
    course = sizes["course_uuid"][0]
    runs = world.dataset.runs.filter(pl.col("course_uuid") == course)["run_uuid"]
    # Most of the course's enrolments vanish from the API at once.
    in_course = pl.col("run_uuid").is_in(runs.implode())
    kept = world.dataset.enrolments.filter(in_course).head(2)
    world.dataset.enrolments = pl.concat([world.dataset.enrolments.filter(~in_course), kept])
    for run in runs:
        world.dataset.versions[run] = world.dataset.versions.get(run, 0) + 1
    before = world.snapshot()

    refused = world.sync()

    assert refused.exit_code != 0
    assert f"{world.key(course)}: enrolment report shrank" in refused.output
    assert world.snapshot() == before
    allowed = world.sync("--allow-shrink", course)
    assert allowed.exit_code == 0, allowed.output


@pytest.fixture
def faulty_world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    faults = (
        "*:503:rate=0.1",
        f"{REPORT}:drop:rate=0.1",
        f"{REPORT}:malformed:nth=2",
        f"{MEMBERSHIP}:429:rate=0.05,retry_after=0",
        f"{MEMBERSHIP}:truncate:nth=3",
    )
    yield from make_world(database_url, tmp_path, monkeypatch, faults)


def test_api_faults_do_not_change_the_outcome(faulty_world: World) -> None:
    result = faulty_world.sync()
    assert result.exit_code == 0, result.output
    assert faulty_world.achievements() == expected_achievements(faulty_world.dataset)
    simulator = faulty_world.simulator
    assert simulator.requests(status=503) + simulator.requests(status="drop") > 0
