"""S1 from the UI: the job's rerun of one course fetches fresh data; a rerun of a later asset
alone reuses stored reports and says so, in its log, its metadata and the run's tags."""

from __future__ import annotations

import dagster as dg

from sync_assets.definitions import defs
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.defs.sync.provenance import CHECK_RUN_TAG
from sync_assets.platform.demo_catalogue import load_catalogue

from .conftest import World
from .test_sync_end_to_end import expected_achievements

SLUG = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}


def _progress(world: World, course: str) -> dict[str, tuple[int, str]]:
    return {
        user: value
        for (user, activity), value in world.achievements().items()
        if activity == SLUG[course]
    }


def _a_course_that_moves_on(world: World) -> tuple[str, dict[str, tuple[int, str]]]:
    """After the simulator's next day: a course whose learners' progress moved, and to what."""
    before = world.achievements()
    world.simulator.advance_day()
    expected = expected_achievements(world.dataset, before)
    for course in sorted(set(world.dataset.runs["course_uuid"]) & SLUG.keys()):
        moved = {
            user: value
            for (user, activity), value in expected.items()
            if activity == SLUG[course] and before.get((user, activity)) != value
        }
        if moved:
            return course, moved
    raise AssertionError("no course moved on the next day")


def _materialize(world: World, course: str, assets: list[str] | None) -> dg.ExecuteInProcessResult:
    with dg.DagsterInstance.get() as instance:
        return defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance,
            partition_key=world.key(course),
            asset_selection=[dg.AssetKey(asset) for asset in assets] if assets else None,
        )


def _the_nights_sync_run_uses_its_checks_course_runs_and_a_rerun_warns_once(world: World) -> None:
    """The night's sync run reuses the course_runs its check run fetched that night, by design:
    nothing in it says "stale" (no warning, no inputs from earlier runs); its tag names the check.
    A rerun of activity_progress alone over every course says so in one warning naming them all
    (a line per course was an event stored per course). It re-applies the night's own reports:
    nothing changes."""
    with dg.DagsterInstance.get() as instance:
        [check] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_check"), limit=1)
        [night] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        materializations = [
            entry.asset_materialization
            for entry in instance.all_logs(
                night.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
        ]
    assert night.tags[CHECK_RUN_TAG] == check.run_id
    assert "sync_assets/inputs" not in night.tags
    assert not _logged(night.run_id, "nothing was requested from FutureLearn")
    assert materializations
    assert not [m for m in materializations if "inputs_from_earlier_runs" in m.metadata]

    courses = sorted(world.partitions())
    assert len(courses) > 1
    with dg.DagsterInstance.get() as instance:
        rerun = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance,
            tags=all_partitions_tags(courses),
            asset_selection=[dg.AssetKey("activity_progress")],
        )
        warnings = [
            entry.user_message
            for entry in instance.all_logs(rerun.run_id)
            if "nothing was requested from FutureLearn" in (entry.user_message or "")
        ]
    assert rerun.success
    [warning] = warnings
    assert warning.startswith(f"{len(courses)} courses (")
    assert all(key in warning for key in courses)
    # The same runs for every course, whatever second each course's value was stored in.
    assert f"course_runs as fetched by run {check.run_id[:8]}; " in warning
    assert f"enrolments as fetched by run {night.run_id[:8]} (when: " in warning


def test_a_nights_run_and_reruns_of_the_last_asset_alone_reuse_stored_reports_the_jobs_fetches(
    world: World,
) -> None:
    """One sync and one next day for every rerun (each was a world of its own): on the night, its
    sync run and a rerun of the last asset over every course (above); then, a day later, of one
    course the last asset alone (stored reports, no change), then the job's (fresh, that course
    only)."""
    assert world.sync().exit_code == 0
    with dg.DagsterInstance.get() as instance:
        [first] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        # The night's check fetched course_runs; its sync run, the reports.
        [check] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_check"), limit=1)
    _the_nights_sync_run_uses_its_checks_course_runs_and_a_rerun_warns_once(world)
    course, moved = _a_course_that_moves_on(world)
    others_before = {k: v for k, v in world.achievements().items() if k[1] != SLUG[course]}
    requests = world.simulator.requests()
    before = _progress(world, course)

    stale = _materialize(world, course, ["activity_progress"])

    assert stale.success
    assert world.simulator.requests() == requests  # nothing was asked of FutureLearn
    assert _progress(world, course) == before  # yesterday's reports, re-applied: no change
    assert any(before.get(user) != value for user, value in moved.items())
    [materialization] = stale.asset_materializations_for_node("activity_progress")
    metadata = materialization.metadata
    assert metadata["fresh_from_futurelearn"].value is False
    used = metadata["inputs_from_earlier_runs"].value
    assert f"enrolments as fetched by run {first.run_id[:8]} at " in used
    assert f"course_runs as fetched by run {check.run_id[:8]} at " in used
    assert _logged(stale.run_id, "nothing was requested from FutureLearn for it in this run")
    assert _logged(stale.run_id, "launch the job futurelearn_sync for the course's partition")
    with dg.DagsterInstance.get() as instance:
        tags = instance.get_run_by_id(stale.run_id).tags
    assert tags["sync_assets/inputs"] == (
        "stored course_runs, enrolments reused, not fetched in this run"
    )

    # The job's rerun of the course: today's reports, for that course only.
    fresh = _materialize(world, course, None)

    assert fresh.success
    assert world.simulator.requests() > requests
    [materialization] = fresh.asset_materializations_for_node("activity_progress")
    assert "inputs_from_earlier_runs" not in materialization.metadata
    progress = _progress(world, course)
    assert all(progress[user] == value for user, value in moved.items())  # today's reports
    others_after = {k: v for k, v in world.achievements().items() if k[1] != SLUG[course]}
    assert others_after == others_before


def _logged(run_id: str, text: str) -> bool:
    with dg.DagsterInstance.get() as instance:
        return any(text in (entry.user_message or "") for entry in instance.all_logs(run_id))
