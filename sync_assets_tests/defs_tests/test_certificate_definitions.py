"""Completion events → sensor → certificate runs with metadata, through the Dagster instance."""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from sync_assets.definitions import defs
from sync_assets.defs.certificates.sensors import EVENTS_PER_RUN, completion_events_sensor
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.defs.sync.launch import QUIET_LOGGERS, prepare_partitions
from sync_assets.platform.demo_catalogue import seed_demo_progress

from .conftest import World


def test_sync_completions_reach_certificate_runs_through_the_sensor(world: World) -> None:
    with world.engine.begin() as connection:
        enrolled = seed_demo_progress(connection, world.dataset.users, share=0.6)
    assert enrolled > 0
    with dg.DagsterInstance.get() as instance:
        partitions = prepare_partitions(instance, None)
        sync = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance, tags=all_partitions_tags(partitions), run_config=QUIET_LOGGERS
        )
        assert sync.success
        with world.engine.connect() as connection:
            events = connection.execute(sa.text("SELECT count(*) FROM completion_events")).scalar()
        assert events > 0

        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            first = completion_events_sensor(context)
            cursor = first.cursor
        with dg.build_sensor_context(
            instance=instance, resources=defs.resources, cursor=cursor
        ) as context:
            again = completion_events_sensor(context)
        assert isinstance(again, dg.SkipReason)  # nothing new after the cursor
        requests = first.run_requests
        assert (
            sum(
                len(r.run_config["ops"]["handle_completion_events"]["config"]["event_ids"])
                for r in requests
            )
            == events
        )
        assert all(r.run_key.startswith("completion-events-") for r in requests)
        assert len(requests) == -(-events // EVENTS_PER_RUN)

        job = defs.resolve_job_def("certificate_job")
        metadata = {}
        for request in requests:
            run = job.execute_in_process(
                instance=instance,
                run_config={**request.run_config, **QUIET_LOGGERS},
                tags=request.tags,
            )
            assert run.success
            output = next(e for e in run.all_events if e.event_type_value == "STEP_OUTPUT")
            metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
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


def test_cli_sync_does_the_certificate_work_itself(world: World) -> None:
    with world.engine.begin() as connection:
        seed_demo_progress(connection, world.dataset.users, share=0.6)
    result = world.sync()
    assert result.exit_code == 0, result.output
    assert "Certificates:" in result.output
    with world.engine.connect() as connection:
        left = connection.execute(
            sa.text("SELECT count(*) FROM completion_events WHERE handled_at IS NULL")
        ).scalar()
    assert left == 0


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
