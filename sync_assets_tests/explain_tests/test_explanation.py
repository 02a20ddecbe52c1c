"""The explanation on the scenarios where the answer is subtle (issue 22), built on frames.

Each scenario is the data a sync would have left: memberships, the stored reports, the stored
achievement with its transitions and events. The assertions are what an operator reads: which
enrolment won and why, what the rules make of it, the verdict and the command that fixes it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl

from sync_assets.explain import inputs as explain_inputs
from sync_assets.explain.explanation import explain
from sync_assets.explain.inputs import Course, ExplainInputs, LastApplied
from sync_assets.explain.render import as_markdown, as_text
from sync_assets.partners_api import contract
from sync_assets.platform import sync_store
from sync_assets.pseudonyms import pseudonym

T = datetime(2026, 3, 1, tzinfo=UTC)
NOW = T + timedelta(days=200)
SYNCED = NOW - timedelta(hours=20)  # the last sync that applied the course
USER, EMAIL = "100042", "Ada.Lovelace@school.example"
COURSE = Course(
    "c0ffee00-0000-4000-8000-000000000001",
    "teaching-physical-computing-c0ffee00",
    "Teaching Physical Computing",
    "physical-computing",
)
RUNS = {"run-a": T, "run-b": T + timedelta(days=60), "run-c": T + timedelta(days=120)}
PRIMARY = "prog-primary"
# ExplainInputs' frames by name, each with the schema `load` reads it in.
SCHEMAS = {
    "users": sync_store.USERS_SCHEMA,
    "memberships": explain_inputs.MEMBERSHIP_SCHEMA,
    "runs": contract.COURSE_RUN_SCHEMA,
    "enrolments": contract.ENROLMENT_SCHEMA,
    "achievement": sync_store.ACHIEVEMENT_SCHEMA,
    "transitions": explain_inputs.TRANSITION_SCHEMA,
    "completion_events": explain_inputs.EVENT_SCHEMA,
    "programme_enrolments": sync_store.ENROLMENT_SCHEMA,
    "activity_programmes": sync_store.ACTIVITY_PROGRAMMES_SCHEMA,
}


def frame(name: str, rows: list[dict]) -> pl.DataFrame:
    schema = SCHEMAS[name]
    return pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema)


def membership(
    uuid: str,
    *,
    user: str | None = USER,
    external: str | None = USER,
    fetched: bool = True,
    stored: bool = True,
) -> dict:
    return {
        "membership_uuid": uuid,
        "user_id": user,
        "external_learner_id": external,
        "fetched_at": T if fetched else None,
        "linked_at": T if user else None,
        "stored": stored,
    }


def enrolment(
    uuid: str, run: str, activated_days: float, ratio: float, deactivated_days: float | None = None
) -> dict:
    return {
        "run_uuid": run,
        "membership_uuid": uuid,
        "status": "active" if deactivated_days is None else "deactivated",
        "activated_at": T + timedelta(days=activated_days),
        "deactivated_at": None
        if deactivated_days is None
        else T + timedelta(days=deactivated_days),
        "steps_completed_count": int(ratio * 40),
        "steps_completed_ratio": ratio,
    }


def achievement(state: str, progress: int, programme: str | None = None) -> dict:
    return {
        "id": 7,
        "user_id": USER,
        "activity_id": COURSE.activity_id,
        "programme_id": programme,
        "progress": progress,
        "state": state,
        "completed_at": SYNCED if state == "complete" else None,
        "created_at": T,
        "updated_at": SYNCED - timedelta(minutes=1),
    }


def inputs(
    memberships: list[dict], enrolments: list[dict], stored: list[dict] = (), **changes
) -> ExplainInputs:
    base = ExplainInputs(
        course=COURSE,
        user_id=USER,
        users=frame(
            "users",
            [
                {"id": USER, "email": EMAIL, "forgotten": False},
                {"id": "100043", "email": "grace@school.example", "forgotten": False},
            ],
        ),
        memberships=frame("memberships", memberships),
        runs=frame(
            "runs",
            [
                {
                    "run_uuid": run,
                    "course_uuid": COURSE.uuid,
                    "title": f"Run {run}",
                    "start_time": start,
                }
                for run, start in RUNS.items()
            ],
        ),
        enrolments=frame("enrolments", enrolments),
        reports_as_of=SYNCED - timedelta(minutes=5),
        reports_fresh=False,
        reports_run_id="abcdef1234",
        unknown_memberships=0,
        achievement=frame("achievement", list(stored)),
        transitions=frame("transitions", []),
        completion_events=frame("completion_events", []),
        programme_enrolments=frame("programme_enrolments", []),
        activity_programmes=frame(
            "activity_programmes",
            [
                {
                    "activity_id": COURSE.activity_id,
                    "programme_id": PRIMARY,
                    "programme_slug": "primary-certificate",
                }
            ],
        ),
        programme_slugs={PRIMARY: "primary-certificate"},
        last_applied=LastApplied(SYNCED, "abcdef1234"),
        now=NOW,
    )
    return replace(base, **changes)


FIX = f"sync-assets resync --course {COURSE.key} --user {USER}"


def test_two_memberships_three_runs_tie_on_activated_at_goes_to_the_later_run() -> None:
    scenario = inputs(
        [membership("m-1"), membership("m-2", external=EMAIL.upper())],
        [
            enrolment("m-1", "run-a", 100, 0.5),
            enrolment("m-2", "run-b", 100, 0.5),  # same activation and ratio, run starts later
            enrolment("m-1", "run-c", 90, 0.9),  # best ratio, but activated earlier
        ],
        [achievement("in_progress", 50, PRIMARY)],
    )

    result = explain(scenario)

    assert [m.how for m in result.memberships] == ["linked by id (R3)", "linked by email (R3)"]
    latest = [e for e in result.enrolments if e.latest]
    assert [(e.run_uuid, e.membership_uuid) for e in latest] == [("run-b", "m-2")]
    assert len(result.enrolments) == 3
    assert result.latest_rule == "tie on activated_at and ratio, then later run start_time (R6)"
    assert result.agrees and result.verdict.startswith("consistent with FutureLearn as of")
    assert result.fix is None


def test_a_dropped_learner_who_came_back_is_off_until_resynced() -> None:
    scenario = inputs(
        [membership("m-1")],
        [
            enrolment("m-1", "run-a", 10, 0.3, deactivated_days=40),  # dropped at 30%
            enrolment("m-1", "run-c", 150, 0.1),  # came back on a later run
        ],
        [achievement("dropped", 30, PRIMARY)],
        # the report with the comeback was stored after the last sync that applied the course
        reports_as_of=SYNCED + timedelta(hours=2),
    )

    result = explain(scenario)

    assert [e.run_uuid for e in result.enrolments if e.latest] == ["run-c"]
    assert result.latest_rule == "greatest activated_at (R6)"
    rules = result.rules
    assert (rules.enrolment_progress, rules.target_state) == (10, "in_progress")
    assert rules.transition == "allowed: dropped → in_progress (R9)"
    assert (rules.state, rules.progress) == ("in_progress", 30)  # progress never decreases
    assert not result.agrees
    assert any("not synced since" in why for why in result.why)
    assert result.verdict.startswith("off: the platform shows dropped 30%")
    assert "make it in_progress 30%" in result.verdict
    assert result.fix == FIX
    assert f"→ run `{FIX}`" in as_text(result)


def test_a_complete_achievement_stays_complete_when_the_latest_enrolment_is_lower() -> None:
    scenario = inputs(
        [membership("m-1")],
        [enrolment("m-1", "run-a", 10, 0.8), enrolment("m-1", "run-c", 150, 0.2)],
        [achievement("complete", 80, PRIMARY)],
    )

    result = explain(scenario)

    assert [e.run_uuid for e in result.enrolments if e.latest] == ["run-c"]
    assert result.rules.transition == "none: complete is terminal, nothing changes (R8)"
    assert (result.rules.state, result.rules.progress) == ("complete", 80)
    assert result.agrees and result.fix is None
    assert result.why == [
        "complete is terminal: the latest enrolment says 20% (in_progress), the achievement "
        "stays complete (R8)"
    ]


def test_a_membership_linked_by_the_platform_is_used_and_said_so() -> None:
    scenario = inputs(
        # An LTI launch: linked by the platform, never fetched, no external id stored.
        [membership("m-lti", external=None, fetched=False)],
        [enrolment("m-lti", "run-b", 70, 0.42)],
        [achievement("in_progress", 42, PRIMARY)],
    )

    result = explain(scenario)

    (linked,) = result.memberships
    assert linked.how == "linked by the platform (invitation link, LTI launch or migration)"
    assert linked.used and linked.on_course
    assert [e.membership_uuid for e in result.enrolments if e.latest] == ["m-lti"]
    assert result.latest_rule == "the only enrolment"
    assert result.agrees


def test_a_forgotten_user_is_left_alone() -> None:
    scenario = inputs(
        [membership("m-1")],
        [enrolment("m-1", "run-a", 10, 0.9)],
        [achievement("in_progress", 12, PRIMARY)],
    )
    scenario = replace(scenario, users=scenario.users.with_columns(forgotten=pl.col("id") == USER))

    result = explain(scenario)

    assert result.forgotten and not result.memberships[0].used
    assert "not used: the user is forgotten (R3)" in result.memberships[0].how
    assert result.enrolments == [] and result.rules is None
    assert result.verdict == (
        f"user {USER} is forgotten: the sync never uses links to them (R3) and leaves their "
        "achievement as it is"
    )
    assert result.fix is None  # a resync would not change them either


def test_a_certificate_refused_because_the_enrolment_is_flagged() -> None:
    scenario = inputs(
        [membership("m-1")],
        [enrolment("m-1", "run-a", 10, 0.75)],
        [achievement("complete", 75, PRIMARY)],
        transitions=frame(
            "transitions",
            [
                {
                    "id": 1,
                    "from_state": "in_progress",
                    "to_state": "complete",
                    "metadata": json.dumps(
                        {
                            "source": "futurelearn_sync",
                            "run_uuid": "run-a",
                            "membership_uuid": "m-1",
                            "steps_completed_ratio": 0.75,
                            "progress": 75,
                            "deactivated": False,
                            "dagster_run_id": "abcdef1234",
                        }
                    ),
                    "created_at": SYNCED - timedelta(days=10),
                }
            ],
        ),
        completion_events=frame(
            "completion_events",
            [
                {
                    "id": 3,
                    "programme_id": PRIMARY,
                    "created_at": SYNCED - timedelta(days=10),
                    "handled_at": SYNCED - timedelta(days=10),
                    "outcome": "moved_to_pending",
                }
            ],
        ),
        programme_enrolments=frame(
            "programme_enrolments",
            [
                {
                    "id": 5,
                    "user_id": USER,
                    "programme_id": PRIMARY,
                    "state": "pending",
                    "flagged": True,
                    "auto_enrolled": False,
                    "pending_since": SYNCED - timedelta(days=10),
                    "created_at": T,
                }
            ],
        ),
    )

    result = explain(scenario)

    (transition,) = result.transitions
    assert transition.cause == (
        "futurelearn_sync, Dagster run abcdef12, course run run-a, membership m-1, "
        "ratio 0.75 → progress 75"
    )
    (event,) = result.completion_events
    assert event.meaning == "C1: requirement met, enrolment moved to pending"
    assert event.certificate.endswith("refused: flagged enrolments cannot complete (C4)")
    assert result.agrees
    assert result.verdict.endswith(
        "; primary-certificate certificate refused: flagged enrolments cannot complete (C4)"
    )


def test_memberships_that_name_the_user_but_are_not_theirs_are_listed() -> None:
    scenario = inputs(
        [
            membership("m-1"),
            # R3 names this user, but another user holds the link: kept, never re-pointed.
            membership("m-2", user="100043", external=USER),
            # Looked up by --fresh, not stored: the next sync links it.
            membership("m-3", user=None, external=EMAIL.lower(), stored=False),
        ],
        [enrolment("m-1", "run-a", 10, 0.2), enrolment("m-3", "run-c", 150, 0.4)],
        [achievement("in_progress", 20, PRIMARY)],
        reports_fresh=True,
        reports_as_of=NOW,
    )

    result = explain(scenario)

    others = {m.membership_uuid: m.how for m in result.other_memberships}
    assert others["m-2"].startswith("R3 matches this user by id, but it is linked to user 100043")
    assert others["m-3"] == "looked up now, not stored: the next sync links it by email (R3)"
    # The sync would use the new link: its enrolment is the latest, and the platform lags.
    assert [e.membership_uuid for e in result.enrolments if e.latest] == ["m-3"]
    assert not result.agrees and result.fix == FIX


def test_nothing_personal_in_any_rendering() -> None:
    scenario = inputs(
        [membership("m-1", external=EMAIL)],
        [enrolment("m-1", "run-a", 10, 0.2)],
        [achievement("in_progress", 20, PRIMARY)],
    )
    result = explain(scenario)
    for rendered in (as_text(result), as_markdown(result), json.dumps(result.to_dict())):
        assert EMAIL.lower() not in rendered.lower()
        assert USER in rendered  # the operator asked about this user: the id is shown


def test_other_users_are_named_as_the_caller_asks() -> None:
    """The Dagster job keeps its explanation in the instance: other users by digest there."""
    scenario = inputs(
        [membership("m-1"), membership("m-2", user="100043", external=USER)],
        [enrolment("m-1", "run-a", 10, 0.2)],
        [achievement("in_progress", 20, PRIMARY)],
    )
    plain = as_markdown(explain(scenario))
    hidden = as_markdown(explain(scenario, other_user=pseudonym))
    assert "linked to user 100043" in plain
    assert "100043" not in hidden and f"linked to user {pseudonym('100043')}" in hidden
