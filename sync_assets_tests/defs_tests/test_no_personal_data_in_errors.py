"""A database error while linking names its courses and why in one line, and leaves no learner's
email or external id in the event log, asset storage, the stored failure records or the alert
(issue 30: SQLAlchemy's `[parameters: …]` and PostgreSQL's failing row carried emails there)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value
from sqlalchemy.engine import Engine

from sync_assets.alerts import FailedRun, failure_alert
from sync_assets.definitions import build_definitions
from sync_assets.error_text import error_line, redact

from . import test_failure_alerts
from .conftest import World, make_world
from .test_failure_alerts import Receiver, _tick
from .test_nothing_secret_at_rest import _stored_values

receiver = test_failure_alerts.receiver  # the loopback webhook fixture


@pytest.fixture
def alerting_world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> Iterator[World]:
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", receiver.url)
    yield from make_world(database_url, tmp_path, monkeypatch)


def _refuse_emails(engine: Engine) -> None:
    """Storing a looked-up membership whose external id is an email fails, as a constraint of the
    platform would: on PostgreSQL with the email in the message's first line and its DETAIL."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                sa.text(
                    "CREATE TRIGGER refuse_email BEFORE INSERT ON future_learn_memberships "
                    "WHEN NEW.external_learner_id LIKE '%@%' "
                    "BEGIN SELECT RAISE(ABORT, 'membership refused'); END"
                )
            )
            return
        connection.execute(
            sa.text(
                "CREATE FUNCTION refuse_email() RETURNS trigger AS $$ BEGIN "
                "IF NEW.external_learner_id LIKE '%@%' THEN RAISE EXCEPTION "
                "'membership refused for %', NEW.external_learner_id "
                "USING DETAIL = 'external id ' || NEW.external_learner_id; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_email BEFORE INSERT ON future_learn_memberships "
                "FOR EACH ROW EXECUTE FUNCTION refuse_email()"
            )
        )


def _event_log_and_storage(home: Path) -> str:
    """Every file of the Dagster home (run and event log databases, asset storage, compute logs),
    the parquet cells of asset storage decoded, and every event record of the instance."""
    parts = [
        path.read_bytes().decode("utf-8", "replace")
        for path in sorted(home.rglob("*"))
        if path.is_file()
    ]
    parts += sorted(_stored_values(home))
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            parts += [serialize_value(entry) for entry in instance.all_logs(run.run_id)]
    return "\n".join(parts)


def test_a_database_error_while_linking_fails_the_courses_in_one_line_without_personal_data(
    alerting_world: World, receiver: Receiver
) -> None:
    world = alerting_world
    _refuse_emails(world.engine)
    defs = build_definitions()
    with dg.DagsterInstance.get() as instance:
        watching = _tick(defs, instance, None)  # the sensor starts watching before the run

    result = world.sync()

    assert result.exit_code != 0
    with dg.DagsterInstance.get() as instance:
        assert _tick(defs, instance, watching.cursor).reason == "1 failure alert sent"
    [alert] = receiver.bodies
    # The courses are named, each with one useful line.
    assert alert["failed_steps"] == ["linked_memberships"]
    assert alert["failed_course_count"] == len(world.partitions())
    for course in alert["failed_courses"]:
        assert course["reason"].startswith("linking: ")
        assert "membership refused" in course["reason"] and "\n" not in course["reason"]
    assert "membership refused" in alert["error"]

    external_ids = set(world.dataset.memberships["external_learner_id"].drop_nulls())
    emails = set(world.dataset.users["email"])
    personal = {value for value in external_ids | emails if not value.isdigit()}
    assert personal
    everywhere = {
        "event log and asset storage": _event_log_and_storage(Path(os.environ["DAGSTER_HOME"])),
        "alert": str(alert),
        "command output": result.output,
    }
    for where, text in everywhere.items():
        lowered = text.lower()
        leaked = sorted(value for value in personal if value.lower() in lowered)
        assert not leaked, f"{where}: {leaked[:3]}"


def test_a_platform_database_error_quotes_no_bound_value(platform_engine: Engine) -> None:
    with pytest.raises(sa.exc.DBAPIError) as raised, platform_engine.connect() as connection:
        connection.execute(
            sa.text("SELECT user_id FROM user_email_keys_missing WHERE email_key = :key"),
            {"key": "teacher.1@school1.example.org"},
        )
    assert "teacher.1@school1.example.org" not in str(raised.value)


def test_error_text_is_one_line_without_emails() -> None:
    error = sa.exc.IntegrityError(
        "INSERT INTO future_learn_memberships …",
        ("Teacher.1@School1.Example.Org", "x"),
        Exception(
            'new row for "zoë.o\'neil+tag@école.example.fr" refused\n'
            "DETAIL:  Failing row contains (Teacher.1@School1.Example.Org, 100001)."
        ),
    )
    line = error_line(error)
    assert line == 'IntegrityError: (builtins.Exception) new row for "[email]" refused'
    assert redact("('a@b.org', \"c.d@e.co.uk\")") == "('[email]', \"[email]\")"


def test_an_alert_carries_no_email_even_from_a_reason_stored_before() -> None:
    run = FailedRun(
        run_id="0123456789abcdef",
        job="futurelearn_sync",
        failed_steps=["activity_progress"],
        failed_courses={"intro-to-sql-88ad7443": "IntegrityError: [parameters: ('a@b.org',)]"},
        error="1 course(s) not synced: intro-to-sql-88ad7443: IntegrityError: ('a@b.org',)",
    )
    assert "a@b.org" not in str(failure_alert(run, ui_url=None))
