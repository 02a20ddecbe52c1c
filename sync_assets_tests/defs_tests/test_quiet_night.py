"""A night costs what changed (issue 33): the check run decides which courses need a run.

On a quiet night (nothing changed) no sync run and no certificate run is made, and no course
partition gets an event; `course_runs` lists every course as checked unchanged, and
`activity_progress` records once that progress is current (what its freshness policy reads). On
a night where some courses changed, the sync runs cover those courses only, and every report is
still asked for once.
"""

from __future__ import annotations

import os
from functools import partial

import dagster as dg
import pytest

from sync_assets.definitions import build_definitions
from sync_assets.defs.sync import night
from sync_assets.defs.sync.changes import CHANGED_COURSES, COURSES_NOT_RUN
from sync_assets.defs.sync.night import (
    changed_course_run_tags,
    changed_courses_sensor,
    runs_overlap,
)
from sync_assets.defs.sync.partitions import changed_ranges, overlapping_chunk, run_partition_keys
from sync_assets.runs.instance import PID_TAG
from sync_assets.runs.launch import NO_CERTIFICATE_WORK, prepare_partitions
from sync_assets.sync import fact_names
from sync_assets_tests.conftest import sqlite_only

from .conftest import MEMBERSHIP, REPORT, World


def _runs_by_job(instance: dg.DagsterInstance) -> dict[str, int]:
    names = [run.job_name for run in instance.get_runs()]
    return {name: names.count(name) for name in set(names)}


def _partition_events(instance: dg.DagsterInstance, runs: set[str]) -> list[str]:
    """Every event naming a course partition (materialisation, observation, planned, failed) in
    the runs `runs`."""
    return [
        f"{entry.dagster_event.event_type_value} {entry.dagster_event.partition}"
        for run_id in sorted(runs)
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.dagster_event.partition
    ]


def _run_ids(instance: dg.DagsterInstance) -> set[str]:
    return {run.run_id for run in instance.get_runs()}


def _latest(instance: dg.DagsterInstance, asset: str) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization


def test_a_quiet_night_makes_no_sync_run_and_no_course_event(world: World) -> None:
    assert world.sync().exit_code == 0
    keys = sorted(world.partitions())
    with dg.DagsterInstance.get() as instance:
        runs_before = _runs_by_job(instance)
        earlier = _run_ids(instance)
        applied = {key: _latest_partition(instance, key) for key in keys}
    world.simulator.reset_counts()

    result = world.sync()

    assert result.exit_code == 0, result.output
    assert f"{len(keys)} skipped as unchanged" in result.output
    # The summary's certificate line is what a certificate run with nothing to do would show.
    assert NO_CERTIFICATE_WORK in result.output.splitlines()
    assert (
        "Certificates: 0 completion events handled, 0 enrolments moved to pending, "
        "0 notifications written, 0 certificates issued."
    ) in result.output.splitlines()
    with dg.DagsterInstance.get() as instance:
        new_runs = {
            job: count - runs_before.get(job, 0)
            for job, count in _runs_by_job(instance).items()
            if count != runs_before.get(job, 0)
        }
        # One check; no sync run, and no certificate run: no event is pending, nothing is due.
        assert new_runs == {"futurelearn_check": 1}
        tonight = _run_ids(instance) - earlier
        assert len(tonight) == 1
        assert _partition_events(instance, tonight) == []
        checked = _latest(instance, "course_runs").metadata
        assert checked[CHANGED_COURSES].value == []
        listed = checked[COURSES_NOT_RUN].value
        assert sorted(course["partition_key"] for course in listed) == keys
        assert {course[fact_names.STATUS] for course in listed} == {fact_names.STATUS_UNCHANGED}
        # Each course's last materialisation is still the first night's.
        assert {key: _latest_partition(instance, key) for key in keys} == applied
        # Progress is current as of the check: one materialisation, no partition.
        current = instance.get_latest_materialization_event(dg.AssetKey("activity_progress"))
        assert current is not None and current.asset_materialization is not None
        assert current.asset_materialization.partition is None
        assert current.run_id == _latest_run(instance, "futurelearn_check")
    # Every report asked once, conditionally; nothing else.
    assert world.simulator.requests(MEMBERSHIP) == 0
    assert world.simulator.requests() == world.simulator.requests(status=304)
    assert world.simulator.requests(REPORT) == world.dataset.known_run_count()


# SQLite only: which courses run: the quiet night's test covers the platform fingerprints on both
# databases.
@sqlite_only
def test_the_next_day_syncs_the_changed_courses_only_asking_each_report_once(
    world: World,
) -> None:
    assert world.sync().exit_code == 0
    world.simulator.advance_day()
    world.simulator.reset_counts()

    result = world.sync()

    assert result.exit_code == 0, result.output
    with dg.DagsterInstance.get() as instance:
        check_id = _latest_run(instance, "futurelearn_check")
        checked = instance.get_run_by_id(check_id)
        assert checked is not None
        changed = list(_latest(instance, "course_runs").metadata[CHANGED_COURSES].value)
        synced = [
            run for run in instance.get_runs() if run.tags.get("sync_assets/check_run") == check_id
        ]
        covered = sorted(
            {
                key
                for run in synced
                for key in run_partition_keys(
                    run.tags, list(instance.get_dynamic_partitions("course"))
                )
            }
        )
    assert changed, "advance_day must change some course"
    assert covered == sorted(changed)
    # The sync runs took the check's reports from the cache: one request per report.
    assert world.simulator.requests(REPORT) == world.dataset.known_run_count()


@sqlite_only
def test_a_night_of_a_few_scattered_courses_runs_its_ranges_one_by_one_in_this_process(
    world: World,
) -> None:
    """A run per range of changed courses, each executed by the command's own process: a
    process of its own each (the overlap of large nights) would cost more than they overlap."""
    _two_days_apart(world)

    with dg.DagsterInstance.get() as instance:
        synced = _runs_of_the_latest_check(instance)
    assert len(synced) > 1, "the night must change courses that are not neighbours"
    assert {run.tags[PID_TAG] for run in synced} == {str(os.getpid())}


@sqlite_only
def test_a_run_whose_range_spans_unchanged_courses_still_skips_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the most ranges a night makes, the narrowest gaps are joined: the one run then covers
    courses the check found unchanged, and they are skipped (a run of courses all found changed
    skips asking which could be)."""
    monkeypatch.setattr(night, "changed_ranges", partial(changed_ranges, max_ranges=1))
    result = _two_days_apart(world)

    with dg.DagsterInstance.get() as instance:
        changed = set(_latest(instance, "course_runs").metadata[CHANGED_COURSES].value)
        [synced] = _runs_of_the_latest_check(instance)
        covered = run_partition_keys(synced.tags, list(instance.get_dynamic_partitions("course")))
    between = set(covered) - changed
    assert len(changed) == 2 and between, "the run must span a course that did not change"
    lines = result.output.splitlines()
    for key in covered:
        [line] = [line for line in lines if line.startswith(f"{key} ")]
        assert ("unchanged" in line.split()) == (key in between), line


def _two_days_apart(world: World):
    """A first sync, then two days, each synced: tiny's second day changes two courses apart.
    The last sync's result."""
    assert world.sync().exit_code == 0
    for _ in range(2):
        world.simulator.advance_day()
        result = world.sync()
        assert result.exit_code == 0, result.output
    return result


def _runs_of_the_latest_check(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    check_id = _latest_run(instance, "futurelearn_check")
    return [run for run in instance.get_runs() if run.tags.get("sync_assets/check_run") == check_id]


def _latest_partition(instance: dg.DagsterInstance, key: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("activity_progress"), asset_partitions=[key]),
        limit=1,
    ).records
    return records[0].run_id if records else None


def _latest_run(instance: dg.DagsterInstance, job: str) -> str:
    [run] = instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)
    return run.run_id


@pytest.mark.parametrize(
    ("changed", "per_run", "max_ranges", "expected"),
    [
        ({"b", "c", "e"}, None, 8, [["b", "c"], ["e"]]),
        # Ranges past the most a night makes: the narrowest gap is joined (b rides along).
        ({"a", "c", "e", "f"}, None, 2, [["a", "b", "c"], ["e", "f"]]),
        ({"a", "b", "c", "d", "e"}, 2, 8, [["a", "b"], ["c", "d"], ["e"]]),
        (set(), None, 8, []),
    ],
)
def test_runs_cover_ranges_of_changed_courses(
    changed: set[str], per_run: int | None, max_ranges: int, expected: list[list[str]]
) -> None:
    assert changed_ranges(list("abcdef"), changed, per_run, max_ranges) == expected


def test_each_run_of_changed_courses_names_its_range_and_its_check() -> None:
    tags = changed_course_run_tags(list("abcdef"), ["b", "c", "f"], "check-1")
    assert [
        (t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"])
        for t in tags
    ] == [("b", "c"), ("f", "f")]
    assert {t["sync_assets/check_run"] for t in tags} == {"check-1"}
    assert run_partition_keys(tags[0], list("abcdef")) == ["b", "c"]
    assert run_partition_keys({"dagster/partition": "e"}, list("abcdef")) == ["e"]
    assert run_partition_keys({}, list("abcdef")) == []


@pytest.mark.parametrize(
    "changed, per_run",
    [(1, None), (27, None), (99, None), (100, 50), (120, 50), (980, 245)],
)
def test_a_night_of_many_changed_courses_is_cut_into_at_most_four_overlapping_runs(
    changed: int, per_run: int | None
) -> None:
    """`sync-assets sync` cuts it so each run's writes overlap the next one's look-ups; a night
    of fewer than a hundred courses stays one run (each run costs its own start and steps)."""
    assert overlapping_chunk(changed) == per_run


def test_overlapping_runs_are_cut_for_the_command_only_and_the_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"course-{n:03}" for n in range(120)]
    assert len(changed_course_run_tags(keys, keys, "check-1")) == 1  # the daemon's queue
    assert len(changed_course_run_tags(keys, keys, "check-1", overlapping=True)) == 3
    monkeypatch.setenv("SYNC_ASSETS_COURSES_PER_RUN", "100")
    assert len(changed_course_run_tags(keys, keys, "check-1", overlapping=True)) == 2


def test_only_runs_cut_to_a_size_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of a few scattered courses run one by one; a night cut for the overlap, or by the
    setting, overlaps."""
    monkeypatch.delenv("SYNC_ASSETS_COURSES_PER_RUN", raising=False)
    assert not runs_overlap(5)
    assert not runs_overlap(99)
    assert runs_overlap(100)
    monkeypatch.setenv("SYNC_ASSETS_COURSES_PER_RUN", "3")
    assert runs_overlap(5)


def _evaluate_sensor(
    instance: dg.DagsterInstance, run_id: str
) -> list[dg.RunRequest | dg.SkipReason]:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    [success] = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_SUCCESS
    ).records
    event = success.event_log_entry.dagster_event
    assert event is not None
    with dg.build_run_status_sensor_context(
        sensor_name=changed_courses_sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
    ) as context:
        return list(changed_courses_sensor(context) or [])


def test_the_sensor_syncs_what_a_scheduled_check_found_changed_in_runs_of_at_most_n(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's path: the schedule's check run (untagged), then the sensor's runs."""
    monkeypatch.setenv("SYNC_ASSETS_COURSES_PER_RUN", "2")
    check_job = build_definitions().resolve_job_def("futurelearn_check")
    with dg.DagsterInstance.get() as instance:
        keys = prepare_partitions(instance, None, say=lambda _: None)  # as the sensor adds them
        first = check_job.execute_in_process(instance=instance)
        requests = _evaluate_sensor(instance, first.run_id)
        covered = [run_partition_keys(r.tags, keys) for r in requests]
        # Every course changed (never synced), in runs of 2 at most.
        assert all(isinstance(r, dg.RunRequest) for r in requests)
        assert all(1 <= len(chunk) <= 2 for chunk in covered)
        assert sorted(key for chunk in covered for key in chunk) == sorted(
            _latest(instance, "course_runs").metadata[CHANGED_COURSES].value
        )
        assert len(covered) > 1
        assert len({r.run_key for r in requests}) == len(requests)  # launched once each
        assert all(
            r.asset_selection is not None and dg.AssetKey("course_runs") not in r.asset_selection
            for r in requests
        )
    # The same check from `sync-assets sync` is its own to follow: the sensor leaves it alone.
    assert world.sync().exit_code == 0
    with dg.DagsterInstance.get() as instance:
        followed = _latest_run(instance, "futurelearn_check")
        [skipped] = _evaluate_sensor(instance, followed)
        assert isinstance(skipped, dg.SkipReason)
        # A scheduled check on a quiet night launches nothing.
        quiet = check_job.execute_in_process(instance=instance)
        [nothing] = _evaluate_sensor(instance, quiet.run_id)
        assert isinstance(nothing, dg.SkipReason)
        assert "no course changed" in (nothing.skip_message or "")
