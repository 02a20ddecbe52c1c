"""The sync's steps, for any set of courses at once, one module each, in the order they run:
`course_runs` (R1), `enrolments`, `linking` (step one, R2–R4), `latest` and `progress` (step two,
R5–R12).

Each takes the Partners API client and/or the platform engine, reads in bulk and returns an
`Outcome` per course uuid (sync/outcomes.py). The rules themselves live in `rules/`; the reads and
writes in `platform/sync_store`. The Dagster assets are declarations over these
(defs/sync/assets.py), and so is anything else that needs the same path (resync, explain). The
names below are what those callers use.
"""

from sync_assets.sync.steps.course_runs import (
    COURSE_RUNS_SCHEMA,
    CourseRuns,
    course_titles,
    fetch_course_runs,
)
from sync_assets.sync.steps.enrolments import (
    REPORT_FINGERPRINT,
    CourseEnrolments,
    QuarantinePolicy,
    courses_to_skip,
    fetch_enrolments,
    quarantine_reasons,
    quarantine_refusal,
)
from sync_assets.sync.steps.latest import choose_latest, latest_outcomes
from sync_assets.sync.steps.linking import (
    LINKED_SCHEMA,
    LINKING_GENERATION,
    LinkingStats,
    link_memberships,
)
from sync_assets.sync.steps.progress import (
    AppliedFrom,
    CircuitBreaker,
    CourseInputs,
    CourseWrite,
    WriteOptions,
    plan_course,
    progress_outcomes,
    sync_course,
)

__all__ = [
    "COURSE_RUNS_SCHEMA",
    "LINKED_SCHEMA",
    "LINKING_GENERATION",
    "REPORT_FINGERPRINT",
    "AppliedFrom",
    "CircuitBreaker",
    "CourseEnrolments",
    "CourseInputs",
    "CourseRuns",
    "CourseWrite",
    "LinkingStats",
    "QuarantinePolicy",
    "WriteOptions",
    "choose_latest",
    "course_titles",
    "courses_to_skip",
    "fetch_course_runs",
    "fetch_enrolments",
    "latest_outcomes",
    "link_memberships",
    "plan_course",
    "progress_outcomes",
    "quarantine_reasons",
    "quarantine_refusal",
    "sync_course",
]
