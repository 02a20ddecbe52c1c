"""R7–R10 and R13: what a latest enrolment does to an achievement."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from sync_assets.rules.achievements import (
    ALLOWED_TRANSITIONS,
    achievement_changes,
    can_transition,
    floored_progress,
)

NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
EARLIER = datetime(2026, 1, 1, tzinfo=UTC)
TIME = pl.Datetime("us", "UTC")


def latest(ratio: float, deactivated: bool = False, user: str = "u1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [user],
            "run_uuid": ["run-1"],
            "membership_uuid": ["m-1"],
            "activated_at": [EARLIER],
            "deactivated_at": [NOW if deactivated else None],
            "steps_completed_ratio": [ratio],
        },
        schema_overrides={"deactivated_at": TIME, "activated_at": TIME},
    )


def current(state: str | None = None, progress: int = 0, user: str = "u1") -> pl.DataFrame:
    rows = [] if state is None else [(user, state, progress, "cs-accelerator", None)]
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.String,
            "state": pl.String,
            "progress": pl.Int64,
            "programme_id": pl.String,
            "completed_at": TIME,
        },
        orient="row",
    )


def outcome(ratio: float, state: str | None = None, progress: int = 0, deactivated: bool = False):
    changes = achievement_changes(
        latest(ratio, deactivated), current(state, progress), activity_id="act", now=NOW
    )
    if changes.is_empty():
        return None
    row = changes.row(0, named=True)
    return row["state"], row["progress"]


@pytest.mark.parametrize(
    ("ratio", "progress"),
    [(0.58, 57), (0.29, 28), (35 / 36, 97), (1.0, 100), (0.0, 0), (0.999, 99), (0.6, 60)],
)
def test_progress_is_floored_in_doubles(ratio: float, progress: int) -> None:
    assert pl.select(floored_progress(pl.lit(ratio))).item() == progress


def test_new_achievements_follow_progress() -> None:
    assert outcome(0.0) == ("enrolled", 0)
    assert outcome(0.3) == ("in_progress", 30)
    assert outcome(0.6) == ("complete", 60)


def test_progress_never_decreases() -> None:
    assert outcome(0.2, "in_progress", 45) is None  # nothing to write at all
    assert outcome(0.5, "in_progress", 45) == ("in_progress", 50)


def test_complete_is_terminal() -> None:
    assert outcome(0.1, "complete", 100) is None
    assert outcome(0.1, "complete", 100, deactivated=True) is None


def test_deactivated_below_60_is_dropped() -> None:
    assert outcome(0.59, "in_progress", 10, deactivated=True) == ("dropped", 59)
    assert outcome(0.0, None, deactivated=True) == ("dropped", 0)


def test_deactivated_at_60_or_more_is_complete() -> None:
    assert outcome(0.6, "in_progress", 10, deactivated=True) == ("complete", 60)


def test_dropped_comes_back() -> None:
    assert outcome(0.3, "dropped", 20) == ("in_progress", 30)
    assert outcome(0.0, "dropped", 0) == ("enrolled", 0)
    assert outcome(1.0, "dropped", 20) == ("complete", 100)


def test_refused_transitions_keep_the_state() -> None:
    # in_progress → enrolled is not allowed: a fresh re-enrolment at 0% leaves the state alone.
    assert outcome(0.0, "in_progress", 40) is None


def test_unchanged_achievements_write_nothing() -> None:
    assert outcome(0.3, "in_progress", 30) is None
    assert outcome(0.0, "enrolled", 0) is None
    assert outcome(0.2, "dropped", 20, deactivated=True) is None


def test_transition_table_is_spec_r9() -> None:
    assert not ALLOWED_TRANSITIONS["complete"]
    assert all(not can_transition(state, state) for state in ALLOWED_TRANSITIONS)
    assert can_transition("dropped", "enrolled") and not can_transition("in_progress", "enrolled")


def test_cause_and_completion_time() -> None:
    changes = achievement_changes(
        latest(0.75), current("in_progress", 40), activity_id="act", now=NOW
    )
    row = changes.row(0, named=True)
    assert row["previous_state"] == "in_progress" and row["completed_at"] == NOW
    assert row["programme_id"] == "cs-accelerator"  # an existing achievement keeps its programme
    assert json.loads(row["cause"]) == {
        "source": "futurelearn_sync",
        "run_uuid": "run-1",
        "membership_uuid": "m-1",
        "steps_completed_ratio": 0.75,
        "progress": 75,
        "deactivated": False,
    }
