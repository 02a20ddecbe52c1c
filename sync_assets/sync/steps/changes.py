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
from sync_assets.partners_api.client import (
    PartnersApiClient,
    PartnersApiError,
    ReportVersion,
    or_failure,
)
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
    # Every run's report at once, not a course's one after another: a course of ten runs made
    # ten round trips in a row while other workers had nothing left to ask.
    checked_runs = [run for course in sorted(runs_of) for run, _ in runs_of[course]]
    fetch = or_failure(client.report_version)

    async def one_run(run: str) -> ReportVersion | PartnersApiError | _Unforeseen:
        try:
            return await fetch(run)
        except Exception as error:  # anything unforeseen in one run's requests costs its course
            if isinstance(error, PartnersApiError) and error.fatal:
                raise
            return _Unforeseen(error)

    answers = dict(zip(checked_runs, await client.fan_out(one_run, checked_runs), strict=True))
    digests: dict[str, str] = {}
    not_modified: dict[str, bool] = {}
    errors: dict[str, str] = {}
    unchanged: set[str] = set()
    for course in sorted(set(courses)):
        course_runs = runs_of.get(course, [])
        reports = [answers[run] for run, _ in course_runs]
        error = _course_error(course_runs, reports)
        if error is not None:
            errors[course] = error
            continue
        versions = [report for report in reports if isinstance(report, ReportVersion)]
        for version in versions:
            digests[version.run_uuid] = version.digest
            not_modified[version.run_uuid] = version.not_modified
        fingerprint = change_tracking.report_fingerprint(
            course_runs, {version.run_uuid: version.digest for version in versions}
        )
        if skip_if_reports.get(course) == fingerprint:
            unchanged.add(course)
    return ReportCheck(
        digests,
        not_modified,
        errors,
        frozenset(courses) - unchanged,
        frozenset(unchanged),
    )


@dataclass(frozen=True)
class _Unforeseen:
    """An error no request should raise (a bug, an unexpected body): its course fails alone."""

    error: Exception


def _course_error(course_runs: list[tuple[str, object]], reports: list[object]) -> str | None:
    """Why a course's reports could not be had (an unforeseen error first), or None."""
    for report in reports:
        if isinstance(report, _Unforeseen):
            return f"reports: {error_line(report.error)}"
    for (run, _), report in zip(course_runs, reports, strict=True):
        if isinstance(report, PartnersApiError):
            return f"report of run {run}: {report}"
    return None
