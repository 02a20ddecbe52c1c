"""Retention: old run history is pruned, never a partition's latest materialisation; and a night
writes its partition table once, and no per-partition preview unless asked."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from sync_assets.cli import main
from sync_assets.definitions import defs
from sync_assets.defs.op_outputs import FOLDER as OP_OUTPUTS
from sync_assets.defs.retention.jobs import prune_run_history_job, sync_check_keys
from sync_assets.defs.retention.schedules import weekly_prune
from sync_assets.defs.sync.assets import course_runs, partitioned_sync_assets, sync_assets_list
from sync_assets.defs.sync.partitions import first_run_of_night
from sync_assets.object_storage import ObjectStore
from sync_assets.retention import RunAge, prune, runs_to_delete
from sync_assets.settings import ConfigurationError, check_settings, storage_url
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_runs_to_delete_only_finished_old_runs_holding_nothing() -> None:
    day = timedelta(days=1)
    runs = [
        RunAge("old", finished=True, ended=NOW - 100 * day),
        RunAge("old-holding-latest", finished=True, ended=NOW - 100 * day),
        RunAge("old-still-queued", finished=False, ended=NOW - 100 * day),
        RunAge("recent", finished=True, ended=NOW - 10 * day),
    ]
    assert runs_to_delete(runs, NOW - 90 * day, frozenset({"old-holding-latest"})) == ["old"]


def test_the_first_run_of_a_night_writes_the_partition_table() -> None:
    keys = ["a", "b", "c"]
    assert first_run_of_night({"dagster/asset_partition_range_start": "a"}, keys)
    assert not first_run_of_night({"dagster/asset_partition_range_start": "b"}, keys)
    assert not first_run_of_night({"dagster/partition": "a"}, keys)  # a rerun of one course
    assert first_run_of_night({}, keys)  # course_runs materialised alone


def _history(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    """What is left of a run: its record, its events, its compute logs, its op outputs."""
    logs = Path(instance.compute_log_manager._base_dir) / run_id  # type: ignore[attr-defined]
    return {
        "record": instance.get_run_record_by_id(run_id) is not None,
        "events": len(instance.all_logs(run_id)),
        "compute_logs": logs.exists(),
        "op_outputs": len(ObjectStore(storage_url()).keys(f"{OP_OUTPUTS}/{run_id}")),
    }


def _latest_by_partition(instance: dg.DagsterInstance) -> dict[tuple[str, str | None], str]:
    """Each asset partition's (and unpartitioned asset's) latest materialisation: its run id."""
    latest: dict[tuple[str, str | None], str] = {}
    partitioned = set(partitioned_sync_assets(sync_assets_list))
    for asset in sync_assets_list:
        key = asset.key
        if key in partitioned:
            records = instance.fetch_materializations(key, limit=1000).records
            for record in reversed(records):  # oldest first: the newest wins
                latest[(key.to_user_string(), record.partition_key)] = record.run_id
        else:
            event = instance.get_latest_materialization_event(key)
            assert event is not None
            latest[(key.to_user_string(), None)] = event.run_id
    return latest


def _materialisations(instance: dg.DagsterInstance) -> list[dg.AssetMaterialization]:
    return [
        record.asset_materialization
        for asset in sync_assets_list
        for record in instance.fetch_materializations(asset.key, limit=1000).records
        if record.asset_materialization
    ]


def _course_runs_metadata(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Each run's course_runs materialisation: its metadata names."""
    records = instance.fetch_materializations(dg.AssetKey("course_runs"), limit=100).records
    return {
        record.run_id: set(record.asset_materialization.metadata)
        for record in records
        if record.asset_materialization
    }


@sqlite_only  # the run history is the Dagster instance's, the same with either platform database
def test_prune_deletes_old_history_and_keeps_every_latest_materialisation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNC_ASSETS_COURSES_PER_RUN", "2")
    # Night one: the check, 3 chunk runs (5 courses), certificate runs.
    assert world.sync().exit_code == 0
    first, second, *_ = sorted(world.partitions())
    assert world.sync("--course", first).exit_code == 0  # night two: one course
    with dg.DagsterInstance.get() as instance:
        before_cutoff = {run.run_id: run for run in instance.get_runs()}
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    assert world.sync("--course", second).exit_code == 0  # after the cutoff
    with dg.DagsterInstance.get() as instance:
        after_cutoff = {run.run_id for run in instance.get_runs()} - before_cutoff.keys()
        latest = _latest_by_partition(instance)
        statuses = world.partition_status("activity_progress")
        # The first chunk's courses were synced again since: it holds nothing latest any more;
        # the other chunks still hold their courses' latest materialisations.
        chunks = {
            run.tags["dagster/asset_partition_range_start"]: run_id
            for run_id, run in before_cutoff.items()
            if "dagster/asset_partition_range_start" in run.tags
        }
        assert len(chunks) == 3
        [check] = [
            run_id for run_id, run in before_cutoff.items() if run.job_name == "futurelearn_check"
        ]
        certificate_runs = [
            run_id
            for run_id, run in before_cutoff.items()
            if run.job_name not in ("futurelearn_sync", "futurelearn_check")
        ]
        # The night's check holds nothing latest either: the reruns checked course_runs since.
        old = sorted([check, chunks[first], *certificate_runs])
        # What the night wrote: the partition table once (its check run, not a rerun of one
        # course), no preview or column schema per partition.
        written = _course_runs_metadata(instance)
        assert [run for run, names in written.items() if "course_partitions" in names] == [check]
        assert len(written) == 3  # the check (the chunks take its course_runs), two reruns
        assert not any(
            {"preview", "dagster/column_schema"} & set(m.metadata)
            for m in _materialisations(instance)
            if m.partition is not None
        )
        assert any(_history(instance, run_id)["op_outputs"] for run_id in old)
        assert all(_history(instance, run_id)["compute_logs"] for run_id in old)

        now = datetime.now(UTC)
        report = prune(instance, now - cutoff, now, sync_check_keys())

        assert sorted(report.run_ids) == old
        assert report.events > 0 and report.op_outputs > 0
        assert report.kept_latest == 3  # two chunk runs and night two's run of one course
        for run_id in old:
            assert _history(instance, run_id) == {
                "record": False,
                "events": 0,
                "compute_logs": False,
                "op_outputs": 0,
            }
        # Every partition's latest materialisation, its run and its event, is still there.
        assert _latest_by_partition(instance) == latest
        assert all(instance.get_run_record_by_id(run_id) for run_id in latest.values())
        assert world.partition_status("activity_progress") == statuses
        # Runs after the cutoff stay, whatever they hold.
        assert after_cutoff and all(_history(instance, run)["record"] for run in after_cutoff)
        # Idempotent: nothing more to delete.
        again = prune(instance, now - cutoff, now, sync_check_keys())
        assert again.run_ids == [] and again.events == 0


@sqlite_only
def test_prune_command_says_what_it_deletes_and_a_dry_run_deletes_nothing(world: World) -> None:
    assert world.sync().exit_code == 0
    assert world.sync().exit_code == 0
    with dg.DagsterInstance.get() as instance:
        # course_runs materialised alone, as from the UI: its run holds that asset's latest
        # materialisation and its check's latest evaluation, and no partition's.
        resources = {name: defs.resources[name] for name in ("partners_api", "platform_database")}
        assert dg.materialize([course_runs], instance=instance, resources=resources).success
        runs = len(instance.get_runs())
    # All but the last sync run (every partition's latest), the quiet night's check (its
    # "progress is current" materialisation of activity_progress is that asset's latest) and the
    # run of course_runs alone.
    older = runs - 3
    dry = CliRunner().invoke(main, ["prune", "--older-than", "0", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith(f"Would delete {older} runs finished before "), dry.output
    assert "kept 3 older runs holding a latest materialisation" in dry.output
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == runs
    done = CliRunner().invoke(main, ["prune", "--older-than", "0"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"Deleted {older} runs finished before "), done.output
    with dg.DagsterInstance.get() as instance:
        assert [run.job_name for run in instance.get_runs()] == [
            "__ephemeral_asset_job__",
            "futurelearn_check",
            "futurelearn_sync",
        ]
    again = CliRunner().invoke(main, ["prune", "--older-than", "0"])
    assert again.output.startswith("Deleted 0 runs finished before "), again.output


@sqlite_only
def test_the_weekly_schedule_prunes_with_the_default_retention(world: World) -> None:
    sunday = datetime(2026, 12, 6, 3, 30)  # a Sunday, London time (GMT in December)
    with dg.DagsterInstance.get() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=sunday)
        requests = list(weekly_prune.evaluate_tick(context).run_requests or [])
        assert len(requests) == 1 and weekly_prune.job_name == "prune_run_history"
        assert (weekly_prune.cron_schedule, weekly_prune.execution_timezone) == (
            "30 3 * * 0",
            "Europe/London",
        )
        for _ in range(2):  # the second finds the first, a minute old: within 90 days, kept
            result = prune_run_history_job.execute_in_process(instance=instance)
            assert result.success
        [output] = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata  # type: ignore[union-attr]
        assert metadata["retention_days"].value == 90
        assert metadata["runs_deleted"].value == 0
        assert len(instance.get_runs()) == 2


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SYNC_ASSETS_RETENTION_DAYS", "0", "must be positive"),
        ("SYNC_ASSETS_RETENTION_DAYS", "ninety", "expected a number"),
        ("SYNC_ASSETS_RETENTION_DAYS", "99999999999", "at most 36,500 days"),
        ("SYNC_ASSETS_PARTITION_PREVIEWS", "maybe", "expected 1 or 0"),
    ],
)
def test_a_bad_retention_or_preview_setting_fails_at_load_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        check_settings()
    assert str(raised.value).startswith(f"{name}: {problem}")
