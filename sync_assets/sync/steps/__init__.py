"""The sync's steps, for any set of courses at once, one module each, in the order they run:
`course_runs` (R1), `enrolments`, `linking` (step one, R2–R4), `latest` and `progress` (step two,
R5–R12).

Each takes the Partners API client and/or the platform engine, reads in bulk and returns an
`Outcome` per course uuid (sync/outcomes.py). The rules themselves live in `rules/`; the reads and
writes in `platform/sync_store`. The Dagster assets are declarations over these
(defs/sync/assets.py), and so is anything else that needs the same path (resync, explain). The
names below are what those callers use.
"""

from sync_assets.sync.steps.changes import ReportCheck, check_courses
from sync_assets.sync.steps.course_runs import (
    COURSE_RUNS_SCHEMA,
    course_titles,
    fetch_course_runs,
    known_courses,
)
from sync_assets.sync.steps.enrolments import (
    COURSE_UUID,
    QuarantinePolicy,
    courses_to_skip,
    fetch_enrolments,
    quarantine_reasons,
    stream_enrolments,
)
from sync_assets.sync.steps.latest import choose_latest, latest_outcomes
from sync_assets.sync.steps.linking import LINKED_SCHEMA, link_memberships
from sync_assets.sync.steps.progress import (
    CircuitBreaker,
    CourseInputs,
    CourseWrite,
    WriteOptions,
    plan_course,
    progress_outcomes,
    progress_summary,
    progress_tally,
    sync_course,
)

__all__ = [
    "COURSE_RUNS_SCHEMA",
    "COURSE_UUID",
    "LINKED_SCHEMA",
    "CircuitBreaker",
    "CourseInputs",
    "CourseWrite",
    "QuarantinePolicy",
    "ReportCheck",
    "WriteOptions",
    "check_courses",
    "choose_latest",
    "course_titles",
    "courses_to_skip",
    "fetch_course_runs",
    "fetch_enrolments",
    "known_courses",
    "latest_outcomes",
    "link_memberships",
    "plan_course",
    "progress_outcomes",
    "progress_summary",
    "progress_tally",
    "quarantine_reasons",
    "stream_enrolments",
    "sync_course",
]
