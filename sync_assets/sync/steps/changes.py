"""Which courses changed since their last sync, learned before any per-course work is made.

A night asks for every report of every known course anyway (conditional requests: an unchanged
report is a 304). Asking them first, in the one step that lists the runs, tells the night which
courses need work: a course whose reports are the ones it was last synced from and whose
platform side has not changed since (`enrolments.courses_to_skip`) needs none, and no run is
made for it. The answers stay in the HTTP cache and each run's digest goes with the runs, so the
step that reads a changed course's reports takes them from the cache (`kept_report`): each
report is requested once a night.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from sync_assets.error_text import error_line
from sync_assets.partners_api.client import PartnersApiClient, PartnersApiError, or_failure
from sync_assets.platform import change_tracking

# Columns the check adds to `course_runs`, per run: its report as this night was served.
REPORT_DIGEST = "report_digest"
REPORT_NOT_MODIFIED = "report_not_modified"
REPORT_ERROR = "report_error"
CHECK_SCHEMA = {REPORT_DIGEST: pl.String, REPORT_NOT_MODIFIED: pl.Boolean, REPORT_ERROR: pl.String}


@dataclass(frozen=True)
class ReportCheck:
    """What the check of some courses found: each run's report as served, each course's verdict."""

    digests: dict[str, str]  # run uuid → its report's digest
    not_modified: dict[str, bool]  # run uuid → every page answered 304
    errors: dict[str, str]  # course → why its reports could not be had (the course needs a run)
    changed: frozenset[str]  # courses that need a run: changed, never synced, or failed
    unchanged: frozenset[str]  # courses whose reports and platform side are as last synced

    def on_runs(self, runs: pl.DataFrame) -> pl.DataFrame:
        """`runs` with each run's report as checked (nulls for a run not checked)."""
        return runs.with_columns(
            pl.col("run_uuid").replace_strict(self.digests, default=None).alias(REPORT_DIGEST),
            pl.col("run_uuid")
            .replace_strict(self.not_modified, default=None, return_dtype=pl.Boolean)
            .alias(REPORT_NOT_MODIFIED),
            pl.col("course_uuid")
            .replace_strict(self.errors, default=None, return_dtype=pl.String)
            .alias(REPORT_ERROR),
        ).cast(CHECK_SCHEMA)


def unchecked(runs: pl.DataFrame) -> pl.DataFrame:
    """`runs` with the check's columns, none checked."""
    return runs.with_columns(
        [pl.lit(None, dtype=dtype).alias(name) for name, dtype in CHECK_SCHEMA.items()]
    )


async def check_courses(
    client: PartnersApiClient,
    runs: pl.DataFrame,
    courses: list[str],
    skip_if_reports: Mapping[str, str],
) -> ReportCheck:
    """Request every report of the courses' runs once (conditionally) and tell which changed.

    `skip_if_reports`: course → the report fingerprint it was last synced from, for the courses
    whose platform side has not changed since (`courses_to_skip`). Refused credentials raise:
    no course can be checked. Any other failure costs its course alone, which then needs a run
    (that run fails it with the reason, without asking again).
    """
    runs_of = {
        course: list(rows.select("run_uuid", "start_time").iter_rows())
        for (course,), rows in runs.filter(pl.col("course_uuid").is_in(courses))
        .partition_by("course_uuid", as_dict=True)
        .items()
    }
    digests: dict[str, str] = {}
    not_modified: dict[str, bool] = {}
    errors: dict[str, str] = {}
    unchanged: set[str] = set()
    fetch = or_failure(client.report_version)

    async def one_course(course: str) -> None:
        course_runs = runs_of.get(course, [])
        try:
            reports = [await fetch(run) for run, _ in course_runs]
        except Exception as error:  # anything unforeseen in one course's requests costs it alone
            if isinstance(error, PartnersApiError) and error.fatal:
                raise
            errors[course] = f"reports: {error_line(error)}"
            return
        for (run, _), report in zip(course_runs, reports, strict=True):
            if isinstance(report, PartnersApiError):
                errors[course] = f"report of run {run}: {report}"
                return
        for report in reports:
            digests[report.run_uuid] = report.digest
            not_modified[report.run_uuid] = report.not_modified
        fingerprint = change_tracking.report_fingerprint(
            course_runs, {report.run_uuid: report.digest for report in reports}
        )
        if skip_if_reports.get(course) == fingerprint:
            unchanged.add(course)

    await client.fan_out(one_course, sorted(set(courses)))
    return ReportCheck(
        digests,
        not_modified,
        errors,
        frozenset(courses) - unchanged,
        frozenset(unchanged),
    )
