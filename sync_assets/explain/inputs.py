"""Everything an explanation is computed from, as plain data: what `load` reads, or a test builds.

Frames use the platform and Partners API schemas the sync itself uses, so the explanation runs the
sync's own rule functions on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from sync_assets.platform import sync_store

UTC_TIME = pl.Datetime("us", "UTC")
# A membership as stored in future_learn_memberships, and whether it is stored at all: a row
# looked up by `--fresh` (never written) has `stored` false.
MEMBERSHIP_SCHEMA = {**sync_store.MEMBERSHIP_COLUMNS, "stored": pl.Boolean}
TRANSITION_SCHEMA = {
    "id": pl.Int64,
    "from_state": pl.String,
    "to_state": pl.String,
    "metadata": pl.String,  # JSON, as the sync wrote it (R10)
    "created_at": UTC_TIME,
}
EVENT_SCHEMA = {
    "id": pl.Int64,
    "programme_id": pl.String,
    "dagster_run_id": pl.String,
    "created_at": UTC_TIME,
    "handled_at": UTC_TIME,
    "outcome": pl.String,
}


@dataclass(frozen=True)
class Course:
    uuid: str
    key: str | None  # its partition key, when it has a partition
    title: str
    activity_id: str


@dataclass(frozen=True)
class LastApplied:
    """The last run that applied the course's progress (activity_progress, status applied)."""

    at: datetime
    run_id: str


@dataclass(frozen=True)
class ExplainInputs:
    course: Course
    user_id: str
    # The user and every user R3 could match one of the memberships to (sync_store.USERS_SCHEMA).
    users: pl.DataFrame
    # The user's memberships and those whose external id may name them (MEMBERSHIP_SCHEMA).
    memberships: pl.DataFrame
    runs: pl.DataFrame  # the course's runs (contract.COURSE_RUN_SCHEMA)
    # The course's enrolment reports, rows of the memberships above (contract.ENROLMENT_SCHEMA).
    enrolments: pl.DataFrame
    reports_as_of: datetime | None  # when the reports were fetched
    reports_fresh: bool  # fetched now (`--fresh`) rather than the last stored
    reports_run_id: str | None  # the run that fetched the stored reports
    unknown_memberships: int  # memberships on the reports never looked up (R2): whose is unknown
    achievement: pl.DataFrame  # 0 or 1 row (sync_store.ACHIEVEMENT_SCHEMA)
    transitions: pl.DataFrame  # of that achievement (TRANSITION_SCHEMA)
    completion_events: pl.DataFrame  # of that achievement (EVENT_SCHEMA)
    programme_enrolments: pl.DataFrame  # the user's (sync_store.ENROLMENT_SCHEMA)
    activity_programmes: pl.DataFrame  # the course activity's (ACTIVITY_PROGRAMMES_SCHEMA)
    programme_slugs: dict[str, str]  # programme id → slug
    last_applied: LastApplied | None
    now: datetime


def empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
