"""The run failure alert: real failed and successful runs in a real Dagster instance, the sensor's
ticks, and a webhook receiver over loopback HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from sync_assets.alerts import FailedRun, failure_alert
from sync_assets.definitions import build_definitions
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.migrate import upgrade
from sync_assets.runs.execution import QUIET_LOGGERS
from sync_assets.simulator.transports import running

TOKEN = "T0KEN-in-the-path-8f3a"


@dataclass
class Receiver:
    """A webhook on loopback: keeps each POSTed JSON body; answers `statuses` in turn, then 200."""

    url: str
    bodies: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                state.bodies.append(body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with running(server):
        state.url = f"http://127.0.0.1:{server.server_port}/hooks/{TOKEN}"
        yield state


@pytest.fixture
def alerting(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dg.Definitions, str]]:
    """The code location with alerts on, and a platform database not yet migrated."""
    url = f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    monkeypatch.setenv("PLATFORM_DATABASE_URL", url)
    monkeypatch.setenv("SYNC_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("SYNC_ASSETS_UI_URL", "https://dagster.example.org/")
    yield build_definitions(), url


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> Tick:
    """One tick as the daemon evaluates it: the sensor's reason and its next cursor."""
    sensor = defs.resolve_sensor_def("run_failure_alert_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        data = sensor.evaluate_tick(context)
    assert not data.run_requests
    return Tick(data.skip_message or "", data.cursor)


@dataclass(frozen=True)
class Tick:
    reason: str
    cursor: str | None


def _certificates(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("certificate_job").execute_in_process(
        instance=instance, run_config=QUIET_LOGGERS, raise_on_error=False
    )


def test_each_failed_run_is_alerted_once_with_a_link_and_successes_are_not(
    alerting: tuple[dg.Definitions, str],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    defs, database_url = alerting
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test() as instance:
        # A failure from before the sensor first ran is history, not news.
        assert not _certificates(defs, instance).success
        first = _tick(defs, instance, None)
        assert receiver.bodies == []

        # The database is not migrated yet: the certificate run fails, for real.
        failed = _certificates(defs, instance)
        assert not failed.success
        upgrade(create_platform_engine(database_url))
        succeeded = _certificates(defs, instance)
        assert succeeded.success

        second = _tick(defs, instance, first.cursor)
        assert second.reason == "1 failure alert sent"
        [alert] = receiver.bodies
        assert alert["job"] == "certificate_job" and alert["run_id"] == failed.run_id
        assert alert["status"] == "FAILURE" and alert["failed_at"]
        assert alert["failed_steps"] == ["handle_completion_events"]
        assert "completion_events" in alert["error"]  # the missing table, in the error summary
        assert alert["run_url"] == f"https://dagster.example.org/runs/{failed.run_id}"
        assert alert["text"].startswith(f"sync_assets: certificate_job run {failed.run_id[:8]}")

        # Nothing new: nothing sent again.
        third = _tick(defs, instance, second.cursor)
        assert third.reason == "0 failure alerts sent"
        assert len(receiver.bodies) == 1

        # A webhook that refuses an alert gets it again on the next tick, once.
        engine = create_platform_engine(database_url)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE completion_events")
        engine.dispose()
        again = _certificates(defs, instance)
        assert not again.success
        receiver.statuses = [503]
        refused = _tick(defs, instance, third.cursor)
        assert refused.reason == (
            f"alert for run {again.run_id} not delivered: the webhook answered HTTP 503"
        )
        assert len(receiver.bodies) == 1
        retried = _tick(defs, instance, refused.cursor)
        assert retried.reason == "1 failure alert sent"
        assert [body["run_id"] for body in receiver.bodies] == [failed.run_id, again.run_id]
        assert _tick(defs, instance, retried.cursor).reason == ("0 failure alerts sent")

    # The webhook URL is a secret: in no skip reason, log line or alert.
    said = [first, second, third, refused, retried]
    text = json.dumps(receiver.bodies) + caplog.text
    text += " ".join(tick.reason for tick in said)
    assert TOKEN not in text


def test_an_alert_names_the_failed_courses_and_why() -> None:
    run = FailedRun(
        run_id="0123456789abcdef",
        job="futurelearn_sync",
        failed_steps=["activity_progress"],
        failed_courses={
            "intro-to-sql-88ad7443": "enrolment report shrank by 40%",
            "python-basics-1a2b3c4d": "HTTP 500 after 6 attempts",
        },
        error="2 course(s) not synced: …",
    )
    alert = failure_alert(run, ui_url=None)
    assert alert["failed_course_count"] == 2
    assert alert["failed_courses"][0] == {
        "partition": "intro-to-sql-88ad7443",
        "reason": "enrolment report shrank by 40%",
    }
    assert alert["run_url"] is None
    assert alert["text"] == (
        "sync_assets: futurelearn_sync run 01234567 failed: 2 courses not synced\n"
        "2 course(s) not synced: …"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SYNC_ASSETS_ALERT_WEBHOOK_URL": f"hooks.example.org/{TOKEN}"},
            "SYNC_ASSETS_ALERT_WEBHOOK_URL: expected an http(s) URL",
        ),
        (
            {"SYNC_ASSETS_UI_URL": "dagster.example.org"},
            "SYNC_ASSETS_UI_URL: expected the Dagster UI's http(s) URL, e.g. https://dagster",
        ),
        (
            {"SYNC_ASSETS_GIT_URL": "https://github.com/example/sync_assets"},
            "SYNC_ASSETS_GIT_BRANCH: required when the other SYNC_ASSETS_GIT_* is set",
        ),
        (
            {"SYNC_ASSETS_GIT_URL": "https://git.example.org/sync", "SYNC_ASSETS_GIT_BRANCH": "m"},
            "SYNC_ASSETS_GIT_URL: Dagster links code on GitHub or GitLab hosts only",
        ),
    ],
)
def test_a_bad_alert_or_code_reference_setting_fails_at_load_in_one_line(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync_assets.settings import ConfigurationError, check_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        check_settings()
    assert str(raised.value) == message  # the webhook's token is not repeated
