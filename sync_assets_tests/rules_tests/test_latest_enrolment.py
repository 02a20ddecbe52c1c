"""R5–R6: one latest enrolment per user and course, whatever the input order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_assets.partners_api.contract import ENROLMENT_SCHEMA
from sync_assets.rules.latest_enrolment import deciding_step, latest_enrolments

T = datetime(2024, 1, 1, tzinfo=UTC)
RUNS = pl.DataFrame(
    {
        "run_uuid": ["run-a", "run-b", "run-c"],
        "start_time": [T, T + timedelta(days=30), T + timedelta(days=30)],
    },
    schema={"run_uuid": pl.String, "start_time": pl.Datetime("us", "UTC")},
)


def enrolment(
    membership: str, run: str, activated: int, ratio: float, deactivated: int | None = None
):
    return {
        "run_uuid": run,
        "membership_uuid": membership,
        "status": "deactivated" if deactivated is not None else "active",
        "activated_at": T + timedelta(hours=activated),
        "deactivated_at": None if deactivated is None else T + timedelta(hours=deactivated),
        "steps_completed_count": int(ratio * 36),
        "steps_completed_ratio": ratio,
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=ENROLMENT_SCHEMA)


LINKS = pl.DataFrame(
    {"membership_uuid": ["m1", "m2", "m3"], "user_id": ["u1", "u1", "u2"]},
)


def pick(rows: list[dict]) -> dict[str, tuple]:
    latest = latest_enrolments(frame(rows), LINKS, RUNS)
    return {
        row["user_id"]: (row["membership_uuid"], row["run_uuid"])
        for row in latest.iter_rows(named=True)
    }


def test_memberships_of_one_user_are_joined() -> None:
    rows = [
        enrolment("m1", "run-a", 1, 0.5),
        enrolment("m2", "run-b", 5, 0.1),
        enrolment("m3", "run-a", 1, 1.0),
    ]
    assert pick(rows) == {"u1": ("m2", "run-b"), "u2": ("m3", "run-a")}


def test_unlinked_memberships_are_left_out() -> None:
    assert pick([enrolment("m-unlinked", "run-a", 1, 1.0)]) == {}


def test_tie_on_activation_goes_to_the_greater_ratio() -> None:
    rows = [enrolment("m1", "run-a", 3, 0.2), enrolment("m2", "run-a", 3, 0.7)]
    assert pick(rows) == {"u1": ("m2", "run-a")}


def test_then_to_the_later_run_start() -> None:
    rows = [enrolment("m1", "run-a", 3, 0.5), enrolment("m2", "run-b", 3, 0.5)]
    assert pick(rows) == {"u1": ("m2", "run-b")}


def test_then_to_the_smaller_run_uuid() -> None:
    rows = [enrolment("m1", "run-c", 3, 0.5), enrolment("m2", "run-b", 3, 0.5)]
    assert pick(rows) == {"u1": ("m2", "run-b")}


enrolment_rows = st.lists(
    st.builds(
        enrolment,
        membership=st.sampled_from(["m1", "m2", "m3"]),
        run=st.sampled_from(["run-a", "run-b", "run-c"]),
        activated=st.integers(0, 3),
        ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(rows=enrolment_rows, data=st.data())
def test_choice_never_depends_on_input_order(rows: list[dict], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(rows))
    first = latest_enrolments(frame(rows), LINKS, RUNS)
    second = latest_enrolments(frame(shuffled), LINKS, RUNS)
    assert first.equals(second)
    assert first["user_id"].is_unique().all()
    # And it is the maximum by R6's order.
    for user in first["user_id"]:
        memberships = set(LINKS.filter(pl.col("user_id") == user)["membership_uuid"])
        mine = [r for r in rows if r["membership_uuid"] in memberships]
        best = max(
            mine,
            key=lambda r: (
                r["activated_at"],
                r["steps_completed_ratio"],
                RUNS.filter(pl.col("run_uuid") == r["run_uuid"])["start_time"].item(),
                [-ord(c) for c in r["run_uuid"]],
            ),
        )
        chosen = first.filter(pl.col("user_id") == user).row(0, named=True)
        assert (chosen["activated_at"], chosen["steps_completed_ratio"]) == (
            best["activated_at"],
            best["steps_completed_ratio"],
        )
        assert chosen["run_uuid"] == best["run_uuid"]


def _candidates(rows: list[dict]) -> pl.DataFrame:
    return frame(rows).join(RUNS, on="run_uuid", how="left")


def test_deciding_step_names_the_first_key_that_told_the_two_best_apart() -> None:
    cases = {
        # later activation wins whatever the ratio
        "activated_at": [enrolment("m1", "run-a", 2, 0.1), enrolment("m1", "run-b", 1, 0.9)],
        "steps_completed_ratio": [
            enrolment("m1", "run-a", 1, 0.5),
            enrolment("m2", "run-b", 1, 0.4),
        ],
        # run-b starts later than run-a
        "start_time": [enrolment("m1", "run-a", 1, 0.5), enrolment("m2", "run-b", 1, 0.5)],
        # run-b and run-c start together: the smaller run uuid
        "run_uuid": [enrolment("m1", "run-c", 1, 0.5), enrolment("m2", "run-b", 1, 0.5)],
        "membership_uuid": [enrolment("m2", "run-b", 1, 0.5), enrolment("m1", "run-b", 1, 0.5)],
    }
    for step, rows in cases.items():
        assert deciding_step(_candidates(rows)) == step
        assert deciding_step(_candidates(rows[::-1])) == step  # order of the input does not matter
    assert deciding_step(_candidates([enrolment("m1", "run-a", 1, 0.5)])) is None


def test_deciding_step_agrees_with_the_enrolment_latest_enrolments_keeps() -> None:
    rows = [
        enrolment("m1", "run-a", 1, 0.5),
        enrolment("m2", "run-b", 1, 0.5),
        enrolment("m1", "run-c", 0, 0.9),
    ]
    links = pl.DataFrame({"membership_uuid": ["m1", "m2"], "user_id": ["u", "u"]})
    kept = latest_enrolments(frame(rows), links, RUNS)
    assert kept.select("run_uuid", "membership_uuid").row(0) == ("run-b", "m2")
    assert deciding_step(_candidates(rows)) == "start_time"
