"""Run retries under a real `dagster-daemon`, with the production instance's `run_retries`.

A run that fails for its data (every enrolment report refused) fails once: no retry run, one
alert. A run whose worker process is killed (SIGKILL at a failpoint, mid-write) is retried once,
from the step it died in; the retry succeeds, and the killed run raises no alert.

The daemon queues, launches (each run a process of the code server it starts), notices the dead
worker and retries; the alert sensor is evaluated here, tick by tick, against the same instance
(the daemon's own ticks are 30 s apart).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pytest
import yaml

from sync_assets.definitions import build_definitions
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.runs.execution import code_location_runs
from sync_assets.runs.launch import prepare_partitions
from sync_assets.simulator.faults import FaultPlan
from sync_assets_tests.defs_tests.conftest import World, make_world
from sync_assets_tests.defs_tests.test_failure_alerts import Receiver, Tick, _tick, receiver
from sync_assets_tests.processes import start, stop

__all__ = ["receiver"]  # the webhook fixture, used here

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAILPOINT = "activity_progress.before_course_commit"
SYNC = "futurelearn_sync"
WAIT_SECONDS = 120
T = TypeVar("T")


def retrying_instance() -> dict:
    """deploy/dagster.yaml's run retries, on SQLite, with the daemon's intervals at a second."""
    production = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    return {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 1},
        "run_retries": production["run_retries"],
        "telemetry": {"enabled": False},
    }


@dataclass
class Daemon:
    world: World
    instance: dg.DagsterInstance
    marker: Path
    log: Path
    cursor: str | None = None  # the alert sensor's
    earlier_runs: frozenset[str] = frozenset()  # runs of the module's earlier tests
    alerting: dg.Definitions | None = None  # the code location with this test's webhook

    def submit_sync(self, run_config: dict | None = None) -> str:
        """Every course in one sync run, queued for the daemon as the schedule's runs are."""
        partitions = prepare_partitions(self.instance, None)
        with code_location_runs(self.instance) as runs:
            return runs.submit(SYNC, run_config or {}, all_partitions_tags(partitions))

    def until(self, what: str, found: Callable[[], T | None]) -> T:
        deadline = time.monotonic() + WAIT_SECONDS
        while (value := found()) is None or value is False:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {what} in {WAIT_SECONDS} s; daemon: {self.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        return value

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def finished(self, run_id: str) -> dg.DagsterRun:
        """The run once it ended, and if it failed, once Dagster said whether it is retried
        (a tag written just after the failure)."""
        return self.until(f"end of run {run_id}", lambda: _ended(self.run(run_id)))

    def sync_runs(self) -> list[str]:
        """This test's sync runs, oldest first."""
        runs = self.instance.get_runs(dg.RunsFilter(job_name=SYNC))
        return [run.run_id for run in reversed(runs) if run.run_id not in self.earlier_runs]

    def alert_tick(self) -> Tick:
        assert self.alerting is not None
        tick = _tick(self.alerting, self.instance, self.cursor)
        self.cursor = tick.cursor
        return tick


def _ended(run: dg.DagsterRun) -> dg.DagsterRun | None:
    if not run.is_finished:
        return None
    if run.status == dg.DagsterRunStatus.FAILURE and "dagster/will_retry" not in run.tags:
        return None
    return run


@pytest.fixture(scope="module")
def running_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module's tests (it takes seconds to start, and its code server too)."""
    tmp_path = tmp_path_factory.mktemp("daemon")
    url = f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for world in make_world(url, tmp_path, monkeypatch):
            home = Path(os.environ["DAGSTER_HOME"])
            (home / "dagster.yaml").write_text(yaml.safe_dump(retrying_instance()))
            (tmp_path / "workspace.yaml").write_text(
                "load_from:\n  - python_module:\n      module_name: sync_assets.definitions\n"
                f"      location_name: sync_assets\n      working_directory: {PROJECT}\n"
            )
            marker = tmp_path / "failpoint"
            env = {
                **os.environ,
                # Each run worker stops before its first course commits, for a test to kill it.
                "SYNC_ASSETS_FAILPOINT": FAILPOINT,
                "SYNC_ASSETS_FAILPOINT_MARKER": str(marker),
                "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",  # what retries runs
            }
            env.pop("SYNC_ASSETS_ALERT_WEBHOOK_URL", None)  # alerts are the tests' ticks alone
            log = tmp_path / "daemon.log"
            # The instance's SQLite files made here first: two processes creating them at once
            # can both stamp a schema version, and neither opens them again.
            with dg.DagsterInstance.get() as instance:
                process = start(
                    [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
                    env,
                    tmp_path,
                    log,
                )
                try:
                    yield Daemon(world, instance, marker, log)
                finally:
                    stop(process)


@pytest.fixture
def daemon(
    running_daemon: Daemon, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Daemon]:
    """The daemon, with this test's webhook, and failures from now on news to the alert sensor."""
    daemon = running_daemon
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", receiver.url)
    daemon.earlier_runs = frozenset(run.run_id for run in daemon.instance.get_runs())
    daemon.alerting = build_definitions()
    daemon.cursor = None
    daemon.alert_tick()
    yield daemon
    daemon.world.simulator.faults = FaultPlan()


def test_a_run_that_fails_for_its_data_is_not_retried_and_alerts_once(
    daemon: Daemon, receiver: Receiver
) -> None:
    # FutureLearn refuses every enrolment report: every course fails, nothing is written.
    daemon.world.simulator.faults = FaultPlan.parse(["course_enrolments_report:500:rate=1"])
    failed_id = daemon.submit_sync({"resources": {"partners_api": {"config": {"max_attempts": 1}}}})
    failed = daemon.finished(failed_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert failed.tags["dagster/failure_reason"] == "STEP_FAILURE"
    assert failed.tags["dagster/will_retry"] == "false"
    # The daemon saw the failure and chose not to retry it (its engine event says so).
    daemon.until(
        "decision not to retry",
        lambda: any(
            "Not retrying run" in (entry.message or "")
            for entry in daemon.instance.all_logs(
                failed_id, of_type=dg.DagsterEventType.ENGINE_EVENT
            )
        ),
    )
    assert daemon.sync_runs() == [failed_id]

    assert daemon.alert_tick().reason == "1 failure alert sent"
    assert [body["run_id"] for body in receiver.bodies] == [failed_id]
    assert daemon.alert_tick().reason == "0 failure alerts sent"


def test_a_killed_run_worker_is_retried_once_and_its_retry_alone_could_alert(
    daemon: Daemon, receiver: Receiver
) -> None:
    killed_id = daemon.submit_sync()
    point, pid = daemon.until("run worker at the failpoint", lambda: _held(daemon.marker)).split()
    os.kill(int(pid), signal.SIGKILL)  # mid-write: the course's transaction is open
    killed = daemon.finished(killed_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert killed.tags["dagster/will_retry"] == "true"

    # The retry, a process of its own, reaches the same point: let it go on.
    held = daemon.until("retry at the failpoint", lambda: _held(daemon.marker, not_pid=pid))
    assert held.split()[0] == point
    daemon.marker.unlink()
    retry_id = daemon.until(
        "retry run", lambda: daemon.run(killed_id).tags.get("dagster/auto_retry_run_id")
    )
    retry = daemon.finished(retry_id)
    assert retry.status == dg.DagsterRunStatus.SUCCESS
    assert retry.parent_run_id == killed_id
    assert retry.step_keys_to_execute == ["activity_progress"]  # from the step it died in
    assert daemon.sync_runs() == [killed_id, retry_id]

    assert daemon.alert_tick().reason == "0 failure alerts sent"
    assert receiver.bodies == []


def _held(marker: Path, not_pid: str | None = None) -> str | None:
    """The failpoint marker's text (`point pid`) once a process waits there (another than
    `not_pid`)."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    if len(text.split()) != 2 or text.split()[1] == not_pid:
        return None
    return text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_an_instance_that_retries_step_failures_our_jobs_still_are_not(world: World) -> None:
    """Dagster's default retries a run that failed at a step; the jobs say not to, whatever
    instance they run on (an operator's own, the local one with run retries turned on)."""
    with world.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE completion_events")
    overrides = {"run_retries": {"enabled": True, "max_retries": 1}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert instance.run_retries_retry_on_asset_or_op_failure  # Dagster's default
        result = (
            build_definitions()
            .resolve_job_def("certificate_job")
            .execute_in_process(instance=instance, raise_on_error=False)
        )
        run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags["dagster/will_retry"] == "false"
    for job in ("futurelearn_sync", "daily_certificates_job", "resync_learners_job"):
        tags = build_definitions().resolve_job_def(job).tags
        assert tags["dagster/retry_on_asset_or_op_failure"] == "false", job
