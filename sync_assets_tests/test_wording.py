"""Log lines and skip reasons say what happened, with plurals right."""

from __future__ import annotations

from collections import Counter

import pytest

from sync_assets.defs.certificates.sensors import idle_message
from sync_assets.sync.steps import progress_summary
from sync_assets.wording import counted


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "0 courses"), (1, "1 course"), (2, "2 courses")]
)
def test_counted_agrees_with_the_count(count: int, expected: str) -> None:
    assert counted(count, "course") == expected
    assert counted(1, "entry", "entries") == "1 entry"
    assert counted(3, "entry", "entries") == "3 entries"


def test_a_sync_with_nothing_to_change_says_so() -> None:
    quiet = Counter(courses=25)
    assert progress_summary(quiet, 0, dry_run=False) == "25 courses synced, nothing changed"
    assert progress_summary(Counter(courses=1), 0, False) == "1 course synced, nothing changed"
    assert progress_summary(quiet, 0, dry_run=True) == "25 courses checked, nothing would change"


def test_a_sync_with_changes_counts_the_courses_that_changed() -> None:
    tally = Counter(courses=25, changed=1, created=2, updated=3, completed=1)
    assert progress_summary(tally, 1, dry_run=False) == (
        "25 courses synced: achievements changed in 1 course "
        "(2 created, 3 updated, 1 completed); 1 course failed"
    )
    assert progress_summary(tally, 0, dry_run=True).startswith(
        "25 courses checked: achievements would change in 1 course ("
    )


def test_the_certificate_sensor_says_what_was_handled_not_a_cursor() -> None:
    assert idle_message(203) == "no completion event is waiting: every event up to #203 is handled"
    assert idle_message(None).startswith("no completion event yet")


def test_the_certificate_summary_counts_in_words() -> None:
    from sync_assets.runs.report import format_certificates

    assert format_certificates(
        {"events_handled": 1, "notifications_written": 2, "certificates_issued": 1}
    ) == (
        "Certificates: 1 completion event handled, 0 enrolments moved to pending, "
        "2 notifications written, 1 certificate issued."
    )


def test_a_night_of_unchanged_courses_says_they_were_skipped() -> None:
    assert progress_summary(Counter(skipped=25), 0, dry_run=False) == (
        "0 courses synced, nothing changed; 25 courses skipped as unchanged"
    )
    assert progress_summary(Counter(courses=1, skipped=1), 0, dry_run=False) == (
        "1 course synced, nothing changed; 1 course skipped as unchanged"
    )
