"""Alerts for failed schedule and sensor ticks and for runs stuck in the queue: real ticks made by
the sensor daemon's own code in this process, real queued runs, and a webhook over loopback."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._scheduler.scheduler import launch_scheduled_runs

from sync_assets.definitions import build_definitions
from sync_assets.runs.dagster_internals import InProcessCodeLocation, code_location_in_this_process
from sync_assets.runs.execution import code_location_runs
from sync_assets.tick_alerts import Tick, Watched, read_ticks
from sync_assets_tests.defs_tests.watched_location import FAILING

from . import test_failure_alerts
from .test_failure_alerts import TOKEN, Receiver

receiver = test_failure_alerts.receiver  # the loopback webhook fixture

PROJECT = Path(__file__).resolve().parents[2]
MODULE = "sync_assets_tests.defs_tests.watched_location"
LOCATION = "watched"
QUEUED = {
    "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
}


@dataclass
class Daemon:
    """The sensor and schedule daemons' iterations over the watched location, half a minute
    apart; a file named after a sensor or schedule in `failing` makes it fail."""

    instance: dg.DagsterInstance
    location: InProcessCodeLocation
    failing: Path
    now: datetime
    schedule_times: dict = field(default_factory=dict)

    def iterate(self, times: int = 1, schedules: bool = False) -> None:
        logger = logging.getLogger("daemon")
        for _ in range(times):
            self.now += timedelta(seconds=31)
            with freeze_time(self.now):
                if schedules:
                    workspace, times_by_schedule = self.location.workspace, self.schedule_times
                    list(launch_scheduled_runs(workspace, logger, self.now, times_by_schedule))
                list(execute_sensor_iteration(self.location.workspace, logger, None, None))

    def ticks(self, name: str) -> list:
        """The ticks of the sensor or schedule `name`, oldest first."""
        [state] = [s for s in self.instance.all_instigator_state() if s.name == name]
        return list(
            reversed(self.instance.get_ticks(state.instigator_origin_id, state.selector_id))
        )

    def reasons(self, name: str) -> list[str]:
        """The skip reasons (or errors) of the ticks of `name`, oldest first."""
        return [t.skip_reason or (t.error.message if t.error else "") for t in self.ticks(name)]


@pytest.fixture
def daemon(
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Daemon]:
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("SYNC_ASSETS_UI_URL", "https://dagster.example.org/")
    monkeypatch.setenv(FAILING, str(tmp_path))
    sys.modules.pop(MODULE, None)  # its alert sensors are defined as the environment says now
    with (
        dg.instance_for_test() as instance,
        code_location_in_this_process(instance, MODULE, str(PROJECT), LOCATION) as location,
    ):
        yield Daemon(instance, location, tmp_path, datetime.now(UTC))
    sys.modules.pop(MODULE, None)


def test_the_first_failed_tick_of_each_streak_is_alerted_once_and_a_refused_one_later(
    daemon: Daemon,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    daemon.iterate()  # the alert sensor starts watching
    (daemon.failing / "catalogue_sensor").touch()
    daemon.iterate(2)  # the catalogue sensor fails; the alert sensor has read it by the second
    [alert] = receiver.bodies
    assert alert["kind"] == "sensor" and alert["name"] == "catalogue_sensor"
    assert alert["status"] == "FAILURE" and alert["failed_at"]
    assert alert["error"] == "RuntimeError: the catalogue could not be read for [email]"
    url = "https://dagster.example.org/locations/__repository__@watched/sensors/catalogue_sensor"
    assert alert["url"] == url
    assert alert["text"].startswith("sync_assets: sensor catalogue_sensor failed")

    daemon.iterate(3)  # still failing: the same streak, not news
    assert len(receiver.bodies) == 1
    assert daemon.reasons("catalogue_sensor")[-1].startswith("dagster._core.errors.SensorExecution")

    (daemon.failing / "catalogue_sensor").unlink()
    daemon.iterate(2)  # it works again: the streak ends, nothing is sent
    assert len(receiver.bodies) == 1

    # A new streak is news; the webhook refuses it once, and gets it on the next tick.
    receiver.statuses = [503]
    (daemon.failing / "catalogue_sensor").touch()
    daemon.iterate(2)
    assert receiver.statuses == []  # refused by now
    daemon.iterate()
    assert len(receiver.bodies) == 2
    assert receiver.bodies[1]["tick_id"] > alert["tick_id"]
    refused = "alert for the failed tick of sensor catalogue_sensor not delivered: the webhook"
    assert any(r.startswith(refused) for r in daemon.reasons("tick_failure_alert_sensor"))
    daemon.iterate(2)
    assert len(receiver.bodies) == 2

    # Nothing secret or personal went out, or into the ticks and logs.
    said = json.dumps(receiver.bodies) + caplog.text
    said += " ".join(daemon.reasons("tick_failure_alert_sensor"))
    assert TOKEN not in said and "jane.doe" not in json.dumps(receiver.bodies)


def test_a_schedule_that_fails_is_alerted_once_with_its_error(
    daemon: Daemon, receiver: Receiver
) -> None:
    daemon.iterate(schedules=True)
    (daemon.failing / "catalogue_schedule").touch()
    daemon.iterate(6, schedules=True)  # three minutes: three ticks of the schedule fail
    [alert] = receiver.bodies
    assert alert["kind"] == "schedule" and alert["name"] == "catalogue_schedule"
    assert alert["error"] == "RuntimeError: the catalogue could not be read for [email]"
    assert alert["url"].endswith("/locations/__repository__@watched/schedules/catalogue_schedule")
    assert sum(tick.is_failure for tick in daemon.ticks("catalogue_schedule")) >= 2


def test_a_tick_still_running_is_read_again_and_one_abandoned_is_passed_over() -> None:
    watched = Watched(tick_id=1, timestamp=10.0)
    assert read_ticks(watched, [Tick(2, 20.0, "STARTED")]) == []  # it may yet fail
    [step] = read_ticks(watched, [Tick(2, 20.0, "FAILURE", "boom")])  # and it did
    assert step.alert and step.watched == Watched(2, 20.0, True)

    abandoned, failed = Tick(2, 20.0, "STARTED"), Tick(3, 30.0, "FAILURE", "boom")
    [step] = read_ticks(watched, [failed, abandoned])
    assert step.tick == failed and step.alert and step.watched == Watched(3, 30.0, True)


def test_a_run_queued_longer_than_the_setting_is_alerted_once(
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLATFORM_DATABASE_URL", f"sqlite:///{tmp_path / 'platform.sqlite3'}")
    monkeypatch.setenv("SYNC_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("SYNC_ASSETS_UI_URL", "https://dagster.example.org/")
    monkeypatch.setenv("SYNC_ASSETS_ALERT_QUEUED_MINUTES", "0.02")  # 1.2 s
    sensor = build_definitions().resolve_sensor_def("queued_run_alert_sensor")

    def tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[str, str | None]:
        with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
            data = sensor.evaluate_tick(context)
        assert not data.run_requests
        return data.skip_message or "", data.cursor

    with dg.instance_for_test(overrides=QUEUED) as instance, code_location_runs(instance) as runs:
        run_id = runs.submit("certificate_job", {}, {})
        reason, cursor = tick(instance, None)
        assert reason == "0 queued run alerts sent"  # not queued long enough yet
        time.sleep(1.3)
        receiver.statuses = [503]
        reason, cursor = tick(instance, cursor)
        assert (
            reason == f"alert for queued run {run_id} not delivered: the webhook answered HTTP 503"
        )
        reason, cursor = tick(instance, cursor)
        assert reason == "1 queued run alert sent"
        [alert] = receiver.bodies
        assert alert["job"] == "certificate_job" and alert["run_id"] == run_id
        assert alert["status"] == "QUEUED" and alert["queued_at"]
        assert alert["run_url"] == f"https://dagster.example.org/runs/{run_id}"
        assert "is the daemon running?" in alert["text"]
        reason, cursor = tick(instance, cursor)
        assert reason == "0 queued run alerts sent"  # once per run
        assert len(receiver.bodies) == 1

        # A run that left the queue is forgotten: the cursor holds the queue, no more.
        assert json.loads(cursor or "")["alerted"] == [run_id]
        instance.report_run_canceled(instance.get_run_by_id(run_id))
        _, cursor = tick(instance, cursor)
        assert json.loads(cursor or "")["alerted"] == []
    assert TOKEN not in json.dumps(receiver.bodies)
