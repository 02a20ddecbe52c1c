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
