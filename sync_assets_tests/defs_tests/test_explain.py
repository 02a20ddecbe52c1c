"""`sync-assets explain` and `explain_learner_job` on a world synced for real (issue 22).

One sync serves the whole story a support request follows: the platform lost a learner's
progress; explain says so from stored data (no request) and names the fix; the fix is run; explain
then finds the platform consistent; the same explanation is read in a Dagster run's metadata;
`--fresh` asks FutureLearn and writes nothing.
"""

from __future__ import annotations

import json
import time

import dagster as dg
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sync_assets.cli import main
from sync_assets.definitions import defs
from sync_assets_tests.conftest import sqlite_only

from .conftest import World


def explain(*args: str) -> Result:
    return CliRunner().invoke(main, ["explain", *args])


def a_learner_with_progress(world: World) -> tuple[str, str, str]:
    """(course uuid, activity id, user id) of an achievement that has progress."""
    with world.engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT a.future_learn_course_uuid, ach.activity_id, ach.user_id "
                "FROM achievements ach JOIN activities a ON a.id = ach.activity_id "
                "WHERE ach.progress > 0 AND ach.state = 'in_progress' ORDER BY 1, 3 LIMIT 1"
            )
        ).one()


def personal_values(world: World, user: str) -> list[str]:
    """The user's email and the external ids of their memberships: never to be shown."""
    with world.engine.connect() as connection:
        email = connection.execute(
            sa.text("SELECT email FROM users WHERE id = :u"), {"u": user}
        ).scalar_one()
        externals = connection.execute(
            sa.text(
                "SELECT external_learner_id FROM future_learn_memberships "
                "WHERE user_id = :u AND external_learner_id IS NOT NULL AND "
                "external_learner_id <> :u"
            ),
            {"u": user},
        ).scalars()
        return [email.lower(), *(external.lower() for external in externals)]


def test_explain_names_the_fix_then_agrees_after_it_in_cli_and_ui(world: World) -> None:
    assert world.sync().exit_code == 0
    course, activity, user = a_learner_with_progress(world)
    key = world.key(course)
    # SQLite's CURRENT_TIMESTAMP is to the second: a change in the sync's own second reads as
    # before it (seen once in CI). The platform changes it a second later, unambiguously.
    time.sleep(1.1)
    with world.engine.begin() as connection:  # "my progress is wrong": the platform lost it
        connection.execute(
            sa.text(
                "UPDATE achievements SET progress = 0, state = 'enrolled', "
                "updated_at = CURRENT_TIMESTAMP WHERE user_id = :u AND activity_id = :a"
            ),
            {"u": user, "a": activity},
        )
    requests = world.simulator.requests()
    before = world.snapshot()

    text = explain("--course", course, "--user", user)
    document = explain("--course", key, "--user", user, "--json")

    assert text.exit_code == 0, text.output
    fix = f"sync-assets resync --course {key} --user {user}"
    verdict = text.output.split("Verdict:\n", 1)[1].strip()
    assert verdict.startswith("off: the platform shows enrolled 0%; FutureLearn's reports as of")
    assert verdict.endswith(f"→ run `{fix}`")
    assert "after the last applied sync: by the platform or by hand" in text.output
    assert "▶ latest run" in text.output and "latest chosen by:" in text.output
    explained = json.loads(document.output)
    assert (explained["agrees"], explained["fix"], explained["course_key"]) == (False, fix, key)
    assert explained["rules"]["progress"] > 0
    for value in personal_values(world, user):
        assert value not in text.output.lower() and value not in document.output.lower()
    assert world.simulator.requests() == requests  # from stored data: no request
    assert world.snapshot() == before  # and nothing written

    resynced = CliRunner().invoke(main, fix.split()[1:], catch_exceptions=False)
    assert resynced.exit_code == 0, resynced.output
    again = explain("--course", key, "--user", user)
    assert "Verdict:\n  consistent with FutureLearn as of" in again.output, again.output

    # The same from the launchpad: the run's Markdown, with the user's id and nothing personal.
    with dg.DagsterInstance.get() as instance:
        job = defs.get_job_def("explain_learner_job")
        run = job.execute_in_process(
            run_config={"ops": {"explain_learner_op": {"config": {"course": key, "user": user}}}},
            instance=instance,
        )
    assert run.success
    (output,) = [event for event in run.all_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = {name: value.value for name, value in output.event_specific_data.metadata.items()}
    assert metadata["user_id"] == user and metadata["agrees"] is True
    markdown = metadata["explanation"]
    assert f"User {user} on " in markdown and "### Verdict" in markdown
    assert "- consistent with FutureLearn as of" in markdown
    for value in personal_values(world, user):
        assert value not in json.dumps(metadata).lower()

    # --fresh asks FutureLearn (conditional requests) and still writes nothing.
    world.simulator.advance_day()
    requests, before = world.simulator.requests(), world.snapshot()
    fresh = explain("--course", key, "--user", user, "--fresh", "--json")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.output)["reports"].startswith("enrolment reports fetched now")
    assert world.simulator.requests() > requests
    assert world.snapshot() == before


@sqlite_only  # an argument refused before any query
def test_unknown_user_or_course_is_one_clear_line(world: World) -> None:
    course = world.dataset.runs["course_uuid"][0]
    unknown_course = "00000000-0000-4000-8000-000000000000"
    for args, message in [
        (("--course", course, "--user", "nobody"), "no platform user with id 'nobody'"),
        (("--course", unknown_course, "--user", "x"), "is not a known course"),
        (("--course", "no-such-key", "--user", "x"), "neither a course uuid nor a course"),
    ]:
        result = explain(*args)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output
    assert world.simulator.requests() == 0
