"""Step retries: a transient database error retries the step, anything else fails it once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from sync_assets import failpoints
from sync_assets.definitions import defs
from sync_assets.runs.execution import QUIET_LOGGERS
from sync_assets_tests.defs_tests.test_certificate_definitions import (
    _sync_with_platform_progress,
)

from .conftest import World

RETRIED = dg.DagsterEventType.STEP_UP_FOR_RETRY


def _certificates(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("certificate_job").execute_in_process(
        instance=instance, run_config=QUIET_LOGGERS, raise_on_error=False
    )


def _pending(world: World) -> int:
    with world.engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT count(*) FROM completion_events WHERE handled_at IS NULL")
        ).scalar_one()


def _drop_connection_at_failpoint(world: World, marker: Path) -> threading.Thread:
    """When the step waits at its failpoint (its writes sent, not committed), the server ends its
    connection, as a restart or failover would; then the step goes on, to its COMMIT."""

    def drop() -> None:
        while not marker.exists():
            time.sleep(0.05)
        with world.engine.connect() as admin:
            admin.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE state = 'idle in transaction' AND pid <> pg_backend_pid() "
                "AND application_name = 'sync_assets'"
            )
            admin.commit()
        marker.unlink()

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.postgres
def test_a_dropped_connection_retries_the_certificate_step_and_each_event_is_handled_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "failpoint"
    monkeypatch.setenv(failpoints.FAILPOINT, "certificates.before_commit")
    monkeypatch.setenv(failpoints.MARKER, str(marker))
    monkeypatch.setattr(failpoints, "_passed", set())
    with dg.DagsterInstance.get() as instance:
        events = _sync_with_platform_progress(world, instance)
        assert _pending(world) == events > 0
        dropper = _drop_connection_at_failpoint(world, marker)
        result = _certificates(instance)
        dropper.join(timeout=10)
        said = " ".join(entry.message for entry in instance.all_logs(result.run_id))
    assert result.success
    retried = [event for event in result.all_events if event.event_type == RETRIED]
    assert len(retried) == 1
    assert "transient platform database error; retry 1 of 3 in" in said
    # The first attempt's transaction was lost whole; the retry handled every event, once.
    assert result.output_for_node("handle_completion_events") == events
    assert _pending(world) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_step_that_fails_for_good_is_not_retried(world: World) -> None:
    with world.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE completion_events")
    with dg.DagsterInstance.get() as instance:
        result = _certificates(instance)
    assert not result.success
    assert [event for event in result.all_events if event.event_type == RETRIED] == []
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert "completion_events" in failure.step_failure_data.error.message  # its own words


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.postgres
def test_a_course_whose_connection_drops_before_its_commit_is_written_again(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first course's writes are sent, then the server ends the connection (a failover): the
    course is written again at once, in the same step, and the night is applied whole."""
    marker = tmp_path / "failpoint"
    monkeypatch.setenv(failpoints.FAILPOINT, "activity_progress.before_course_commit")
    monkeypatch.setenv(failpoints.MARKER, str(marker))
    monkeypatch.setattr(failpoints, "_passed", set())
    dropper = _drop_connection_at_failpoint(world, marker)

    result = world.sync()

    dropper.join(timeout=10)
    assert not marker.exists()  # the failpoint was reached, and the connection dropped there
    assert result.exit_code == 0, result.output
    assert "not applied" not in result.output
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        said = " ".join(entry.message for entry in instance.all_logs(run.run_id))
    assert "transient platform database error, written again (attempt 2 of 4)" in said
