"""Completion events → sensor → certificate runs with metadata, through the Dagster instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from sync_assets.definitions import defs
from sync_assets.defs.certificates.sensors import EVENTS_PER_RUN, completion_events_sensor
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.platform.certificate_store import PENDING_DAYS
from sync_assets.platform.demo_catalogue import seed_demo_progress
from sync_assets.platform.tables import user_programme_enrolments
from sync_assets.runs.execution import QUIET_LOGGERS
from sync_assets.runs.launch import NO_CERTIFICATE_WORK, prepare_partitions
from sync_assets.wording import counted
from sync_assets_tests.conftest import sqlite_only

from .conftest import World


def _event_ids(request: dg.RunRequest) -> list[int]:
    return request.run_config["ops"]["handle_completion_events"]["config"]["event_ids"]


def _tick(instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        return completion_events_sensor(context)


def _under_way(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """What the daemon makes of a run request: a certificate run, started, not yet finished."""
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def("certificate_job"),
        run_config=request.run_config,
        tags=request.tags,
        status=dg.DagsterRunStatus.STARTED,
    )


def _sync_with_platform_progress(world: World, instance: dg.DagsterInstance) -> int:
    """A first sync of a platform where many users have progress of their own; its events."""
    with world.engine.begin() as connection:
        enrolled = seed_demo_progress(connection, world.dataset.users, share=0.6)
    assert enrolled > 0
    partitions = prepare_partitions(instance, None)
    sync = defs.resolve_job_def("futurelearn_sync").execute_in_process(
        instance=instance, tags=all_partitions_tags(partitions), run_config=QUIET_LOGGERS
    )
    assert sync.success
    with world.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM completion_events")).scalar()


# SQLite only: how completions reach certificate runs is Dagster's side; the certificate store
# (numbering) is the daily job's test, on both databases.
@sqlite_only
def test_sync_completions_reach_certificate_runs_through_the_sensor(world: World) -> None:
    with dg.DagsterInstance.get() as instance:
        events = _sync_with_platform_progress(world, instance)
        assert events > 0

        first = _tick(instance)
        requests = first.run_requests
        assert sum(len(_event_ids(r)) for r in requests) == events
        assert len(requests) == -(-events // EVENTS_PER_RUN)
        in_flight = [_under_way(instance, request) for request in requests]
        # While their runs are in flight, the same events are not launched again.
        assert isinstance(_tick(instance), dg.SkipReason)

        job = defs.resolve_job_def("certificate_job")
        metadata = {}
        for request, run in zip(requests, in_flight, strict=True):
            instance.report_run_canceled(run)  # the stand-in makes way for the real run
            result = job.execute_in_process(
                instance=instance,
                run_config={**request.run_config, **QUIET_LOGGERS},
                tags=request.tags,
            )
            assert result.success
            output = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
            metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
        done = _tick(instance)
    with world.engine.connect() as connection:
        latest = connection.execute(sa.text("SELECT max(id) FROM completion_events")).scalar()
    # Says the events were handled (by state), not "none after #0" as a stale cursor did.
    assert isinstance(done, dg.SkipReason)
    assert (
        done.skip_message
        == f"no completion event is waiting: every event up to #{latest} is handled"
    )
    assert metadata["events_handled"] == events
    assert metadata["enrolments_moved_to_pending"] + metadata["notifications_written"] > 0
    assert (
        "requirement_not_met" in metadata["events_needing_nothing"]
        or metadata["events_needing_nothing"]
    )
    with world.engine.connect() as connection:
        left = connection.execute(
            sa.text("SELECT count(*) FROM completion_events WHERE handled_at IS NULL")
        ).scalar()
        pending = connection.execute(
            sa.text("SELECT count(*) FROM user_programme_enrolments WHERE state = 'pending'")
        ).scalar()
    assert left == 0 and pending == metadata["enrolments_moved_to_pending"]


# SQLite only: how completions reach certificate runs is Dagster's side; the certificate store
# (numbering) is the daily job's test, on both databases.
@sqlite_only
def test_events_of_a_failed_run_go_out_again_unless_a_sweep_is_in_flight(world: World) -> None:
    """State, not a cursor: what a failed run left pending goes out again on the next tick; a
    sweep in flight (the daily job, which handles every pending event) holds the sensor back.
    One sync for both (each was a sync of its own): the sweep is checked where, without it, the
    tick would launch the failed run's events again."""
    with dg.DagsterInstance.get() as instance:
        _sync_with_platform_progress(world, instance)
        first = _tick(instance).run_requests
        runs = [_under_way(instance, request) for request in first]
        instance.report_run_failed(runs[0], "the database went away")

        again = _tick(instance)

        assert [_event_ids(r) for r in again.run_requests] == [_event_ids(first[0])]
        instance.create_run_for_job(
            job_def=defs.resolve_job_def("daily_certificates_job"),
            status=dg.DagsterRunStatus.STARTED,
        )
        tick = _tick(instance)
    assert isinstance(tick, dg.SkipReason) and "every pending event" in tick.skip_message


def _certificate_runs() -> int:
    with dg.DagsterInstance.get() as instance:
        return len(instance.get_runs(dg.RunsFilter(job_name="daily_certificates_job")))


def _count(world: World, query: str) -> int:
    with world.engine.connect() as connection:
        return connection.execute(sa.text(query)).scalar_one()


PENDING = "SELECT count(*) FROM user_programme_enrolments WHERE state = 'pending'"
CERTIFIED = "SELECT count(*) FROM user_programme_enrolments WHERE certificate_number IS NOT NULL"


def test_cli_sync_does_the_certificate_work_itself_when_there_is_some(world: World) -> None:
    """Three nights: completions (C1, C3), then nothing, then only certificates falling due (C2).
    A night makes the daily job's run when there is work, and only then (issue 33)."""
    with world.engine.begin() as connection:
        seed_demo_progress(connection, world.dataset.users, share=0.6)

    first = world.sync()

    assert first.exit_code == 0, first.output
    assert _certificate_runs() == 1
    moved = _count(world, PENDING)
    assert moved > 0, "the first night's completions meet C1 for some learners"
    assert f"{counted(moved, 'enrolment')} moved to pending" in first.output
    assert _count(world, "SELECT count(*) FROM completion_events WHERE handled_at IS NULL") == 0

    quiet = world.sync()

    assert quiet.exit_code == 0, quiet.output
    assert NO_CERTIFICATE_WORK in quiet.output.splitlines()
    assert _certificate_runs() == 1
    assert (_count(world, PENDING), _count(world, CERTIFIED)) == (moved, 0)

    # A week on, by the platform's clock: nothing else to do but C2.
    with world.engine.begin() as connection:
        connection.execute(
            sa.update(user_programme_enrolments)
            .where(user_programme_enrolments.c.state == "pending")
            .values(pending_since=datetime.now(UTC) - timedelta(days=PENDING_DAYS, hours=1))
        )

    due = world.sync()

    assert due.exit_code == 0, due.output
    assert _certificate_runs() == 2
    assert (_count(world, PENDING), _count(world, CERTIFIED)) == (0, moved)
    assert f"{counted(moved, 'certificate')} issued" in due.output


def test_daily_certificates_job_sweeps_and_numbers(world: World) -> None:
    with world.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO user_programme_enrolments"
                " (user_id, programme_id, state, pending_since)"
                " VALUES (:user, 'primary-certificate', 'pending', :since)"
            ),
            [
                {"user": user, "since": "2000-01-01 00:00:00"}
                for user in world.dataset.users["id"].head(3)
            ],
        )
    with dg.DagsterInstance.get() as instance:
        run = defs.resolve_job_def("daily_certificates_job").execute_in_process(
            instance=instance, run_config=QUIET_LOGGERS
        )
    assert run.success
    with world.engine.connect() as connection:
        numbers = sorted(
            connection.execute(
                sa.text(
                    "SELECT certificate_number FROM user_programme_enrolments"
                    " WHERE programme_id = 'primary-certificate' AND state = 'complete'"
                )
            ).scalars()
        )
    assert numbers == [1, 2, 3]
