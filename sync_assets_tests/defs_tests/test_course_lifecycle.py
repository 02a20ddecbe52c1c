"""Courses come and go (R1): a withdrawn course is reported, not failed; a course no longer known
has its partition retired; a newly known course is synced as soon as the sensor sees it."""

from __future__ import annotations

import dagster as dg
import polars as pl
import sqlalchemy as sa

from sync_assets.definitions import defs
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.partitions import course_partitions
from sync_assets.defs.sync.sensors import PARTITIONED_ASSETS, course_partitions_sensor
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

CATALOGUE = {c["future_learn_course_uuid"] for c in load_catalogue()}


def _known_course_with_learners(world: World) -> str:
    """The known course with the most enrolments (so its achievements are worth keeping)."""
    sizes = (
        world.dataset.enrolments.join(world.dataset.runs, on="run_uuid")
        .filter(pl.col("course_uuid").is_in(list(CATALOGUE)))
        .group_by("course_uuid")
        .len()
        .sort("len", "course_uuid", descending=True)
    )
    return sizes["course_uuid"][0]


def _activity_of(world: World, course: str) -> str:
    with world.engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT id FROM activities WHERE future_learn_course_uuid = :course"),
            {"course": course},
        ).scalar_one()


def _set_course_of_activity(world: World, activity: str, course: str | None) -> None:
    with world.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE activities SET future_learn_course_uuid = :course WHERE id = :id"),
            {"course": course, "id": activity},
        )


def _map_new_activity(world: World, course: str) -> None:
    """The platform adds an activity for a course FutureLearn lists (the course becomes known)."""
    with world.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO activities (id, title, credit, category, provider, "
                "future_learn_course_uuid) VALUES (:id, 'New course', 20, 'online', "
                "'future-learn', :course)"
            ),
            {"id": f"fl-{course}", "course": course},
        )


def _instance_keys() -> list[str]:
    with dg.DagsterInstance.get() as instance:
        return list(instance.get_dynamic_partitions(course_partitions.name))


def _stored(key: str) -> list[str]:
    """The partitioned assets something is stored for under a partition key."""
    io_manager = PartitionedParquetIOManager()
    return [
        asset.to_user_string()
        for asset in PARTITIONED_ASSETS
        if key in io_manager.stored_partitions(asset)
    ]


def test_a_withdrawn_course_stays_then_unmapped_too_its_partition_is_retired(
    world: World,
) -> None:
    """One world for a course's two ends (each was a world and a first sync of its own): withdrawn
    by FutureLearn, it is reported and keeps its achievements, and synced again when listed
    again; later withdrawn and unmapped on the platform, its partition is retired, while a new
    course is synced."""
    assert world.sync().exit_code == 0
    _a_withdrawn_course_is_reported_not_failed_and_its_achievements_stay(world)
    _a_course_no_longer_known_has_its_partition_retired_and_a_new_one_is_synced(world)


def _a_withdrawn_course_is_reported_not_failed_and_its_achievements_stay(world: World) -> None:
    course = _known_course_with_learners(world)
    key = world.key(course)
    activity = _activity_of(world, course)
    before = world.snapshot()
    assert any(row["activity_id"] == activity for row in before["achievements"])

    withdrawn_runs = world.dataset.withdraw_course(course)
    night = world.sync()

    assert night.exit_code == 0, night.output
    assert "Withdrawn (R1): FutureLearn lists no runs for 1 known course" in night.output
    assert f"  {key} ({course})" in night.output
    assert f"{key}  " in night.output and "withdrawn" in night.output.split(key)[1].split("\n")[0]
    assert world.snapshot() == before  # its learners' achievements (and everything else) stay
    assert key in _instance_keys()  # withdrawn, not retired
    with dg.DagsterInstance.get() as instance:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("activity_progress"), asset_partitions=[key]
            ),
            limit=1,
        ).records
        [runs] = instance.fetch_materializations(dg.AssetKey("course_runs"), limit=1).records
    listed = runs.asset_materialization.metadata["withdrawn_course_list"].value
    # Every known course FutureLearn lists no runs for (the catalogue has more than it lists).
    assert course in [entry["uuid"] for entry in listed]
    assert not {entry["uuid"] for entry in listed} & set(world.dataset.runs["course_uuid"])
    # The night's check says why it made no run for it; the partition keeps its last
    # materialisation (the night before's), with no event of its own tonight.
    [not_run] = [
        entry
        for entry in runs.asset_materialization.metadata["courses_not_run"].value
        if entry["partition_key"] == key
    ]
    assert not_run["status"] == "withdrawn"
    assert not_run["course_uuid"] == course
    assert "FutureLearn lists no runs for it" in not_run["note"]
    assert record.asset_materialization.metadata["status"].value == "applied"
    assert record.run_id != runs.run_id

    # Listed again: synced as before (nothing changed meanwhile, so nothing to write).
    world.dataset.list_runs(withdrawn_runs)
    again = world.sync()
    assert again.exit_code == 0, again.output
    assert "Withdrawn" not in again.output
    assert world.snapshot() == before


def _a_course_no_longer_known_has_its_partition_retired_and_a_new_one_is_synced(
    world: World,
) -> None:
    course = _known_course_with_learners(world)
    key = world.key(course)
    assert sorted(_stored(key)) == sorted(a.to_user_string() for a in PARTITIONED_ASSETS)
    # FutureLearn withdraws it, then the platform unmaps it (its activity loses the uuid); and
    # a course FutureLearn lists becomes known on the platform the same day.
    world.dataset.withdraw_course(course)
    _set_course_of_activity(world, _activity_of(world, course), None)
    new = sorted(set(world.dataset.runs["course_uuid"]) - CATALOGUE)[0]
    _map_new_activity(world, new)
    achievements = len(world.table("achievements"))

    night = world.sync()

    assert night.exit_code == 0, night.output
    assert "1 course partition retired, its course no longer known to the platform" in (
        night.output
    )
    assert key in night.output.split("retired")[1].split("\n")[0]
    assert key not in _instance_keys()
    assert _stored(key) == []  # learners' data no partition names is gone
    with dg.DagsterInstance.get() as instance:  # its history stays in the event log
        history = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("activity_progress"), asset_partitions=[key]
            ),
            limit=5,
        ).records
    assert history and history[0].asset_materialization.metadata["course_uuid"].value == course
    new_key = world.key(new)
    assert "1 course partition added" in night.output
    assert [line for line in night.output.splitlines() if line.startswith(new_key)]
    assert "applied" in next(line for line in night.output.splitlines() if line.startswith(new_key))
    assert len(world.table("achievements")) > achievements  # the new course's learners
    assert world.sync().exit_code == 0  # and the nights after


@sqlite_only
def test_the_sensor_requests_new_partitions_with_a_run_and_retires_unknown_ones(
    world: World,
) -> None:
    assert world.sync().exit_code == 0
    retired_course = _known_course_with_learners(world)
    retired = world.key(retired_course)
    _set_course_of_activity(world, _activity_of(world, retired_course), None)  # still listed
    new = sorted(set(world.dataset.runs["course_uuid"]) - CATALOGUE)[0]
    _map_new_activity(world, new)

    # Unmapped since the partitions were last checked: a night before the check does not fail
    # the course (nor alert); it says the course is no longer known and leaves it as it is.
    before = world.achievements()
    with dg.DagsterInstance.get() as instance:
        night = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance, tags={"dagster/partition": retired}
        )
    assert night.success
    [shown] = [
        event.materialization.metadata
        for event in night.get_asset_materialization_events()
        if event.materialization.asset_key == dg.AssetKey("activity_progress")
    ]
    assert shown["status"].value == "no longer known"
    assert world.achievements() == before

    with dg.DagsterInstance.get() as instance:
        existing = list(instance.get_dynamic_partitions(course_partitions.name))
        with dg.build_sensor_context(
            instance=instance, resources=defs.resources, cursor="3"
        ) as context:
            result = course_partitions_sensor(context)
        assert isinstance(result, dg.SensorResult)
        [add, delete] = result.dynamic_partitions_requests
        assert isinstance(add, dg.AddDynamicPartitionsRequest)
        [new_key] = add.partition_keys
        assert new_key.endswith(new.replace("-", "")[:8])
        assert isinstance(delete, dg.DeleteDynamicPartitionsRequest)
        assert list(delete.partition_keys) == [retired]
        assert _stored(retired) == []  # removed before the partition goes
        [run] = result.run_requests
        assert run.run_key == "new-courses-4/1-of-1" and result.cursor == "4"
        assert run.tags["dagster/asset_partition_range_start"] == new_key
        assert run.tags["dagster/asset_partition_range_end"] == new_key
        assert _instance_keys() == existing  # the daemon applies the requests, not the sensor

        # As the daemon does: the requests, then the run.
        instance.add_dynamic_partitions(course_partitions.name, list(add.partition_keys))
        instance.delete_dynamic_partition(course_partitions.name, retired)
        synced = defs.resolve_job_def(run.job_name or "futurelearn_sync").execute_in_process(
            instance=instance, tags=run.tags
        )
        assert synced.success
        [progress] = [
            event.materialization
            for event in synced.get_asset_materialization_events()
            if event.materialization.asset_key == dg.AssetKey("activity_progress")
        ]
        assert progress.partition == new_key
        assert progress.metadata["status"].value == "applied"
        assert progress.metadata["achievements_created"].value > 0

        with dg.build_sensor_context(
            instance=instance, resources=defs.resources, cursor="4"
        ) as context:
            again = course_partitions_sensor(context)
        assert isinstance(again, dg.SkipReason)
        assert again.skip_message == f"all {len(existing)} known courses have partitions"

        # A run queued for the retired partition before it went fails, naming the partition.
        queued = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance, tags={"dagster/partition": retired}, raise_on_error=False
        )
    assert not queued.success
    [failure] = [event for event in queued.all_events if event.is_step_failure]
    assert failure.step_key == "enrolments"
    message = failure.step_failure_data.error.message
    assert f"Nonexistent partition keys: ['{retired}']" in message
    assert "retired after the run was queued" in message
