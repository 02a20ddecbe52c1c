"""Step two, first half (R5–R6): each linked user's latest enrolment per course."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import polars as pl

from sync_assets.error_text import error_line
from sync_assets.rules.latest_enrolment import latest_enrolments
from sync_assets.sync import fact_names
from sync_assets.sync.outcomes import Computed, Failed, Outcomes


def choose_latest(
    course: str, enrolments: pl.DataFrame, linked: pl.DataFrame, runs: pl.DataFrame
) -> pl.DataFrame:
    """Each linked user's latest enrolment on the course, across runs and memberships."""
    return latest_enrolments(
        enrolments, linked.filter(pl.col("user_id").is_not_null()), runs
    ).with_columns(course_uuid=pl.lit(course))


def latest_outcomes(
    courses: Iterable[str], enrolments: Outcomes, linked: Outcomes, runs: pl.DataFrame
) -> Iterator[tuple[str, Computed | Failed]]:
    """Step two's first half, course by course: one course's rules failing stops no other.

    What each frame is computed from (its report's fingerprint, the linking generation) travels
    with it, for the progress step to record with the course's write.
    """
    for course in courses:
        report, links = enrolments[course], linked[course]
        assert isinstance(report, Computed) and isinstance(links, Computed)
        try:
            frame = choose_latest(course, report.frame, links.frame, runs)
        except Exception as error:
            yield course, Failed(f"latest enrolments: {error_line(error)}")
            continue
        facts = {
            fact_names.LEARNERS: frame.height,
            fact_names.DUPLICATE_ROWS: frame.height - frame["user_id"].n_unique(),
        }
        yield course, Computed(frame, {**report.stamps, **links.stamps}, facts)
