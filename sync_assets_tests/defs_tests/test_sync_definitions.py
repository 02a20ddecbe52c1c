"""The sync's Dagster definitions: partitions sensor, nightly schedule, checks and metadata."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from sync_assets.definitions import defs
from sync_assets.defs.sync.assets import STEPS_IN_TURN
from sync_assets.defs.sync.night import HANDOFF_STEP
from sync_assets.defs.sync.partitions import CourseKeys, course_partitions, slugify
from sync_assets.defs.sync.schedules import nightly_futurelearn_sync
from sync_assets.defs.sync.sensors import course_partitions_sensor
from sync_assets.markdown import markdown_text
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.sync.steps import course_titles
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

CATALOGUE = {c["future_learn_course_uuid"] for c in load_catalogue()}


def test_lineage_puts_linking_before_progress() -> None:
    graph = defs.resolve_asset_graph()
    upstream = {
        key.to_user_string(): {parent.to_user_string() for parent in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert upstream["enrolments"] == {"course_runs"}
    assert upstream["linked_memberships"] == {"enrolments"}
    assert "linked_memberships" in upstream["latest_enrolments"]
    assert "latest_enrolments" in upstream["activity_progress"]


def test_every_step_after_the_handoff_that_calls_the_partners_api_takes_turns() -> None:
    """Overlapping runs (`sync-assets sync`) start the next run once HANDOFF_STEP has ended: a
    later step that calls the API without waiting for the run before it (STEPS_IN_TURN) would
    look up memberships beside the next run's."""
    graph = defs.resolve_asset_graph()
    steps = [key.to_user_string() for key in graph.toposorted_asset_keys]
    calling = {
        key.to_user_string()
        for key in graph.toposorted_asset_keys
        if "partners_api" in graph.get(key).assets_def.required_resource_keys
    }
    after = steps[steps.index(HANDOFF_STEP) + 1 :]
    assert calling & set(after) == STEPS_IN_TURN == {"linked_memberships"}


# SQLite only: partitions and metadata: Dagster's side; the sync's writes are
# test_sync_end_to_end's, on both.
@sqlite_only
def test_sensor_adds_a_readable_partition_per_known_course(world: World) -> None:
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources=defs.resources) as context,
    ):
        result = course_partitions_sensor(context)
        known = set(world.dataset.runs["course_uuid"]) & CATALOGUE
        # Requested, with a run for them, for the daemon to apply and launch at once.
        assert isinstance(result, dg.SensorResult)
        assert not instance.get_dynamic_partitions(course_partitions.name)
        [add] = result.dynamic_partitions_requests
        assert isinstance(add, dg.AddDynamicPartitionsRequest) and len(add.partition_keys) == len(
            known
        )
        [run] = result.run_requests
        assert run.tags["dagster/asset_partition_range_start"] == sorted(add.partition_keys)[0]
        assert run.tags["dagster/asset_partition_range_end"] == sorted(add.partition_keys)[-1]
        instance.add_dynamic_partitions(course_partitions.name, list(add.partition_keys))
        keys = instance.get_dynamic_partitions(course_partitions.name)
        titles = course_titles(world.dataset.runs)
        mapping = CourseKeys.resolve(keys, world.dataset.runs["course_uuid"]).uuid_of_key
        assert set(mapping.values()) == known and len(keys) == len(known)
        for key, course in mapping.items():
            assert key == f"{slugify(titles[course])}-{course.replace('-', '')[:8]}"
        again = course_partitions_sensor(context)
    assert isinstance(again, dg.SkipReason)
    assert again.skip_message == f"all {len(known)} known courses have partitions"


def test_nightly_schedule_starts_the_night_with_one_check_of_every_course() -> None:
    assert nightly_futurelearn_sync.cron_schedule == "0 2 * * *"
    assert nightly_futurelearn_sync.execution_timezone == "Europe/London"
    assert nightly_futurelearn_sync.job_name == "futurelearn_check"
    with dg.instance_for_test() as instance:
        when = datetime(2026, 11, 23, 2, 0, tzinfo=ZoneInfo("Europe/London"))
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
            assert isinstance(nightly_futurelearn_sync(context), dg.SkipReason)
        instance.add_dynamic_partitions(course_partitions.name, ["c-1", "c-2", "c-3"])
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
            request = nightly_futurelearn_sync(context)
    assert isinstance(request, dg.RunRequest)
    # No partition: course_runs alone, which checks every course partition.
    assert not any(tag.startswith("dagster/") for tag in request.tags)
    assert request.run_key == when.isoformat()


def _run_events(world: World) -> list[dg.EventLogEntry]:
    """The last night's events: its check run's, then its sync run's."""
    with dg.DagsterInstance.get() as instance:
        [check] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_check"), limit=1)
        [run] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        return [*instance.all_logs(check.run_id), *instance.all_logs(run.run_id)]


def _check(events: list[dg.EventLogEntry], name: str) -> dg.AssetCheckEvaluation:
    return next(
        entry.dagster_event.event_specific_data
        for entry in events
        if entry.dagster_event
        and entry.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        and entry.dagster_event.event_specific_data.check_name == name
    )


def _assert_metadata_is_informative_and_holds_no_personal_data(
    world: World, events: list[dg.EventLogEntry]
) -> None:
    materialisations = [
        entry.dagster_event.event_specific_data.materialization
        for entry in events
        if entry.dagster_event and entry.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
    ]
    progress = [m for m in materialisations if m.asset_key.to_user_string() == "activity_progress"]
    known = set(world.dataset.runs["course_uuid"]) & CATALOGUE
    assert {m.metadata["course_uuid"].value for m in progress} == known
    assert {m.partition for m in progress} == {world.key(course) for course in known}
    titles = course_titles(world.dataset.runs)
    assert all(
        m.metadata["course_title"].value == titles[world.partitions()[m.partition]]
        for m in progress
    )
    [course_runs] = [m for m in materialisations if m.asset_key.to_user_string() == "course_runs"]
    table = course_runs.metadata["course_partitions"].value
    assert all(
        f"| {markdown_text(titles[course])} | `{world.key(course)}` | `{course}` |" in table
        for course in known
    )
    first = dict(progress[0].metadata)
    for name in (
        "dagster/row_count",
        "preview",  # SYNC_ASSETS_PARTITION_PREVIEWS on (off by default)
        "achievements_created",
        "links_made",
    ):
        assert name in first
    linking = next(
        m for m in materialisations if m.asset_key.to_user_string() == "linked_memberships"
    )
    assert "api_requests" in linking.metadata and "looked_up" in linking.metadata
    for asset in ("enrolments", "linked_memberships", "latest_enrolments", "activity_progress"):
        of_asset = [m for m in materialisations if m.asset_key.to_user_string() == asset]
        # A Python with Dagster loaded: the run's peak on every course, the memory after each
        # course where courses are processed one by one.
        assert of_asset and all(m.metadata["run_peak_rss_mib"].value > 50 for m in of_asset)
        if asset in ("latest_enrolments", "activity_progress"):
            assert all(m.metadata["rss_mib_after_course"].value > 50 for m in of_asset), asset
        else:
            assert not any("rss_mib_after_course" in m.metadata for m in of_asset), asset
    # Every column a run stores is the one the definition declares, with its description (the
    # definition carries the schema; a partition's event carries it in its preview only).
    graph = defs.resolve_asset_graph()
    assert not any("dagster/column_schema" in m.metadata for m in materialisations)
    for m in materialisations:
        if "preview" not in m.metadata:
            continue
        stored = m.metadata["preview"].value.schema.columns
        declared = graph.get(m.asset_key).metadata["dagster/column_schema"].columns
        assert [c.name for c in stored] == [c.name for c in declared], m.asset_key
        assert all(column.description for column in stored), m.asset_key

    text = json.dumps(
        [{k: str(v.value) for k, v in m.metadata.items()} for m in materialisations]
        + [str(entry.user_message) for entry in events]
    )
    emails = world.dataset.users["email"].to_list()
    externals = world.dataset.memberships["external_learner_id"].to_list()
    assert not [value for value in emails + externals if "@" in value and value in text]
    assert not [value for value in externals if "@" in value and value.lower() in text.lower()]
    previews = [m.metadata["preview"].value for m in materialisations if "preview" in m.metadata]
    user_cells = [
        record.data["user_id"]
        for table in previews
        for record in table.records
        if "user_id" in record.data
    ]
    linked_cells = [cell for cell in user_cells if cell is not None]  # unlinked: no user
    assert linked_cells and all(cell.startswith("user:") for cell in linked_cells)


# SQLite only: partitions and metadata: Dagster's side; the sync's writes are
# test_sync_end_to_end's, on both.
@sqlite_only
def test_first_sync_metadata_and_checks_then_unknown_courses_ignored(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sync's metadata and asset checks (one sync for both; each was a sync of its
    own), then a sync with the unknown courses ignored."""
    monkeypatch.setenv("SYNC_ASSETS_PARTITION_PREVIEWS", "1")
    assert world.sync().exit_code == 0
    events = _run_events(world)
    _assert_metadata_is_informative_and_holds_no_personal_data(world, events)
    # Courses are written one after another in partition-key order (by title), as the summary
    # lists them: the completion events' ids follow it (the certificate jobs handle them so).
    key_of_course = {uuid: key for key, uuid in world.partitions().items()}
    key_of_activity = {
        row["id"]: key_of_course.get(row["future_learn_course_uuid"])
        for row in world.table("activities")
    }
    events_in_id_order = sorted(world.table("completion_events"), key=lambda row: row["id"])
    written = [key_of_activity[row["activity_id"]] for row in events_in_id_order]
    assert written and written == sorted(written)
    unknown = sorted(set(world.dataset.runs["course_uuid"]) - CATALOGUE)
    warning = _check(events, "unknown_courses_reported")
    assert not warning.passed and warning.severity == dg.AssetCheckSeverity.WARN
    listed = warning.metadata["unknown_courses"].value
    assert all(uuid in listed for uuid in unknown)
    assert _check(events, "one_latest_enrolment_per_user_and_course").passed
    assert _check(events, "enrolment_report_not_shrunk").passed

    monkeypatch.setenv("FL_PARTNERS_IGNORED_COURSE_UUIDS", ",".join(unknown))
    assert world.sync().exit_code == 0
    assert _check(_run_events(world), "unknown_courses_reported").passed
