"""C4: the programme enrolment state machine, in one place."""

from __future__ import annotations

import pytest

from sync_assets.rules.certificates import ENROLMENT_TRANSITIONS, enrolment_refusal


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("enrolled", "unenrolled"),
        ("enrolled", "pending"),
        ("enrolled", "complete"),
        ("unenrolled", "enrolled"),
        ("pending", "complete"),
        ("pending", "enrolled"),
        ("complete", "pending"),
        ("complete", "enrolled"),
    ],
)
def test_allowed(source: str, target: str) -> None:
    assert enrolment_refusal(source, target, flagged=False) is None


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("unenrolled", "pending"),
        ("pending", "unenrolled"),
        ("complete", "complete"),
        ("enrolled", "enrolled"),
    ],
)
def test_refused_with_a_reason(source: str, target: str) -> None:
    assert "not an allowed transition" in enrolment_refusal(source, target, flagged=False)


def test_complete_is_refused_while_flagged() -> None:
    assert "flagged" in enrolment_refusal("pending", "complete", flagged=True)
    assert enrolment_refusal("pending", "enrolled", flagged=True) is None


def test_every_state_is_in_the_table() -> None:
    assert set(ENROLMENT_TRANSITIONS) == {"enrolled", "unenrolled", "pending", "complete"}
