"""Step two, first half: each user's latest enrolment on a course (R5, R6)."""

from __future__ import annotations

import polars as pl

# R6's order, made total by the membership uuid so that no input order can change the choice.
LATEST_FIRST = (
    ("activated_at", True),
    ("steps_completed_ratio", True),
    ("start_time", True),
    ("run_uuid", False),
    ("membership_uuid", False),
)


def latest_enrolments(
    enrolments: pl.DataFrame, links: pl.DataFrame, runs: pl.DataFrame
) -> pl.DataFrame:
    """R5–R6: one enrolment per linked user, across all runs and all the user's memberships.

    `enrolments`: the course's enrolment reports (contract.ENROLMENT_SCHEMA).
    `links`: membership_uuid → user_id, usable links only. `runs`: run_uuid, start_time.
    The latest has the greatest activated_at; ties go to the greater ratio, then the later run
    start, then the smaller run uuid.
    """
    joined = enrolments.join(links.select("membership_uuid", "user_id"), on="membership_uuid").join(
        runs.select("run_uuid", "start_time"), on="run_uuid", how="left"
    )
    columns, descending = zip(*LATEST_FIRST, strict=True)
    return (
        joined.sort(list(columns), descending=list(descending), nulls_last=True)
        .unique(subset="user_id", keep="first", maintain_order=True)
        .sort("user_id")
    )


# What each step of LATEST_FIRST means when it is the one that decided, as an operator reads it.
DECIDED_BY = {
    "activated_at": "greatest activated_at (R6)",
    "steps_completed_ratio": "tie on activated_at, then greater steps_completed_ratio (R6)",
    "start_time": "tie on activated_at and ratio, then later run start_time (R6)",
    "run_uuid": "tie on activated_at, ratio and run start, then smaller run uuid (R6)",
    "membership_uuid": "same run and times on two memberships, then smaller membership uuid "
    "(the order made total)",
}


def deciding_step(candidates: pl.DataFrame) -> str | None:
    """Which step of R6's order chose one user's latest enrolment over the runner-up.

    `candidates`: one user's enrolments with `start_time` (as `latest_enrolments` joins them).
    The name of the first LATEST_FIRST column on which the two best differ, or None when there
    is only one enrolment (nothing had to be decided). Sorted exactly as `latest_enrolments`
    sorts, so the winner here is the one it keeps.
    """
    if candidates.height < 2:
        return None
    columns, descending = zip(*LATEST_FIRST, strict=True)
    best, runner_up = (
        candidates.sort(list(columns), descending=list(descending), nulls_last=True)
        .head(2)
        .select(columns)
        .iter_rows()
    )
    for column, first, second in zip(columns, best, runner_up, strict=True):
        if first != second:
            return column
    return None  # the same enrolment twice: nothing told them apart
