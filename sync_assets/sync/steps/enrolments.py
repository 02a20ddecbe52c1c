"""The enrolments step: every report of the courses' runs, requested once, as one outcome per
course (a frame stamped with its reports' fingerprint, failed, refused, or unchanged since its last
successful sync and skipped)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy.engine import Engine

from sync_assets.error_text import error_line
from sync_assets.partners_api import contract
from sync_assets.partners_api.client import (
    Fetched,
    PartnersApiClient,
    PartnersApiError,
    RawReport,
    or_failure,
    parse_reports,
)
from sync_assets.platform import change_tracking, sync_store
from sync_assets.sync import fact_names
from sync_assets.sync.outcomes import Computed, Failed, Outcome, Unchanged
from sync_assets.sync.steps import changes
from sync_assets.sync.steps.course_runs import activities_of
from sync_assets.wording import counted

# Stamped on a course's report: its fingerprint, for the progress step to record with the
# course's write (change_tracking), so a later night can skip the course.
REPORT_FINGERPRINT = "report_fingerprint"
# Stamped on it too: the course it is of, for a step that knows no more of the course (linking).
COURSE_UUID = "course_uuid"


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a course's report is refused for the share of its records quarantined."""

    max_share: float = 0.1
    allowed_courses: frozenset[str] = frozenset()  # applied however many are quarantined


@dataclass
class EnrolmentsTally:
    """What the courses' reports came to, counted as each course's outcome is handed on: the
    step keeps these figures, not the outcomes (each course's frame goes as soon as it is
    recorded)."""

    courses: int = 0
    quarantined: int = 0
    kinds: Counter[type] = field(default_factory=Counter)
    unchanged_runs: set[str] = field(default_factory=set)  # answered 304
    changed_runs: set[str] = field(default_factory=set)

    def add(self, fetched: _CourseFetch) -> None:
        self.courses += 1
        self.quarantined += sum(part.height for part in fetched.quarantine)
        self.kinds[type(fetched.outcome)] += 1
        self.unchanged_runs |= fetched.unchanged_runs
        self.changed_runs |= fetched.changed_runs

    def summary(self) -> str:
        return (
            f"{counted(self.courses, 'course')}: "
            f"{counted(len(self.changed_runs), 'report')} changed, "
            f"{len(self.unchanged_runs)} unchanged (304), "
            f"{counted(self.quarantined, 'record')} quarantined, "
            f"{counted(self.kinds[Failed], 'course')} failed, "
            f"{self.kinds[Unchanged]} skipped as unchanged"
        )


@dataclass(frozen=True)
class CourseEnrolments:
    # Each course: its reports as one frame (stamped with their fingerprint), failed, or
    # unchanged (its reports are the ones it was last synced from, see `stream_enrolments`).
    outcomes: dict[str, Outcome]
    tally: EnrolmentsTally

    def frames(self) -> dict[str, pl.DataFrame]:
        """The frames of the courses that were fetched and read (neither failed nor skipped)."""
        return {c: o.frame for c, o in self.outcomes.items() if isinstance(o, Computed)}

    def failure(self, course: str) -> str | None:
        outcome = self.outcomes.get(course)
        return outcome.reason if isinstance(outcome, Failed) else None

    def summary(self) -> str:
        return self.tally.summary()


async def fetch_enrolments(
    client: PartnersApiClient,
    runs: pl.DataFrame,
    courses: Iterable[str],
    skip_if_reports: Mapping[str, str] | None = None,
    policy: QuarantinePolicy | None = None,
) -> CourseEnrolments:
    """`stream_enrolments`, every course's outcome kept and returned, by course: for a few
    courses (resync, explain). The step of a night streams them instead."""
    outcomes: dict[str, Outcome] = {}
    tally = await stream_enrolments(
        client, runs, courses, outcomes.__setitem__, skip_if_reports, policy
    )
    return CourseEnrolments(dict(sorted(outcomes.items())), tally)


async def stream_enrolments(
    client: PartnersApiClient,
    runs: pl.DataFrame,
    courses: Iterable[str],
    record: Callable[[str, Outcome], None],
    skip_if_reports: Mapping[str, str] | None = None,
    policy: QuarantinePolicy | None = None,
) -> EnrolmentsTally:
    """Every report of the courses' runs, each requested once, as one outcome per course, each
    handed to `record(course, outcome)` as soon as it is made and not kept: a night holds the
    frames of the courses in flight, not the catalogue's (on `large`, ~1 GiB held at once).

    `skip_if_reports`: course → the report fingerprint it was last synced from, for courses whose
    platform side has not changed since. A course whose reports still have that fingerprint is
    skipped (`Unchanged`): not parsed (its 304s are not even decoded). With a `policy`, a course
    whose report is mostly quarantined is refused (`quarantine_refusal`).
    """
    wanted = sorted(set(courses))
    skip_if_reports = skip_if_reports or {}
    course_runs = runs.filter(pl.col("course_uuid").is_in(wanted))
    runs_of = {
        course: list(rows.select("run_uuid", "start_time").iter_rows())
        for (course,), rows in course_runs.partition_by("course_uuid", as_dict=True).items()
    }
    checked = _checked_reports(course_runs)
    tally = EnrolmentsTally()

    async def one_course(course: str) -> None:
        # Course by course, `concurrency` courses at a time: a skipped course's unparsed pages
        # are dropped as soon as its last report is in, a read course's frame once recorded.
        fetched = await _fetch_course(
            client, course, runs_of.get(course, []), skip_if_reports.get(course), policy, checked
        )
        tally.add(fetched)
        record(course, fetched.outcome)

    await client.fan_out(one_course, wanted)
    return tally


@dataclass(frozen=True)
class _CourseFetch:
    outcome: Outcome
    quarantine: list[pl.DataFrame] = field(default_factory=list)
    unchanged_runs: frozenset[str] = frozenset()  # answered 304
    changed_runs: frozenset[str] = frozenset()


async def _fetch_course(
    client: PartnersApiClient,
    course: str,
    runs: list[tuple[str, datetime]],
    skip_if_fingerprint: str | None,
    policy: QuarantinePolicy | None,
    checked: _CheckedReports | None = None,
) -> _CourseFetch:
    """One course's reports, each run's requested once a night (taken from the cache as this
    night's check was served them, `checked`): its outcome, and how they were served."""
    checked = checked or _CheckedReports()
    if course in checked.errors:  # the check asked, with every retry: not asked again
        return _CourseFetch(Failed(checked.errors[course]))
    try:
        fetch = or_failure(checked.or_request(client))
        reports = [await fetch(run) for run, _ in runs]
    except Exception as error:  # anything unforeseen in one course's requests costs it alone
        if isinstance(error, PartnersApiError) and error.fatal:
            raise  # refused credentials: no course can be fetched
        return _CourseFetch(Failed(f"reports: {error_line(error)}"))
    errors = [
        (run, answer)
        for (run, _), answer in zip(runs, reports, strict=True)
        if isinstance(answer, PartnersApiError)
    ]
    if errors:
        return _CourseFetch(Failed(f"report of run {errors[0][0]}: {errors[0][1]}"))
    fingerprint = change_tracking.report_fingerprint(
        runs, {report.run_uuid: report.digest for report in reports}
    )
    facts = {
        fact_names.RUNS: len(reports),
        fact_names.REPORTS_UNCHANGED: sum(report.not_modified for report in reports),
    }
    served = {
        "unchanged_runs": frozenset(r.run_uuid for r in reports if r.not_modified),
        "changed_runs": frozenset(r.run_uuid for r in reports if not r.not_modified),
    }
    if skip_if_fingerprint == fingerprint:
        return _CourseFetch(Unchanged(facts), **served)
    parsed = _parsed_at_once(reports)
    if parsed is None:  # one cannot be read: which, and whether it reads when asked again
        parsed = []
        for index, report in enumerate(reports):
            read = await _parse_or_ask_again(client, report)
            if isinstance(read, str):
                return _CourseFetch(Failed(f"report of run {report.run_uuid}: {read}"))
            report, fetched = read
            reports[index] = report
            parsed.append(fetched)
    # A report asked for again may be another than the check's: the course is synced from this.
    fingerprint = change_tracking.report_fingerprint(
        runs, {report.run_uuid: report.digest for report in reports}
    )
    outcome = _course_report(course, parsed, fingerprint, facts, policy)
    return _CourseFetch(outcome, [fetched.quarantine for fetched in parsed], **served)


def _parsed_at_once(reports: list[RawReport]) -> list[Fetched] | None:
    """The course's reports read in one pass (what reading them one by one gives, for one
    pass's fixed cost), or None if any cannot be read."""
    if not reports:
        return []
    try:
        return [parse_reports(reports)]
    except Exception:  # any body, however hostile: read one by one, each its own reason
        return None


async def _parse_or_ask_again(
    client: PartnersApiClient, report: RawReport
) -> tuple[RawReport, Fetched] | str:
    """The report parsed, or why it cannot be. Its cache entries are forgotten when it cannot
    (its pages may be 304s of a cached body: tomorrow would fail on it again). A report the
    check stored without decoding it is then asked for again, with the retries any request
    has, as the check would have retried it: a broken body within the night costs a request,
    not the course."""
    try:
        return report, report.parse()
    except Exception as error:  # any body, however hostile, costs its course only
        await client.forget(report.page_urls)
        if not report.from_check:
            return contract.unreadable_body(error)
    try:
        again = await client.enrolment_report(report.run_uuid)
    except Exception as error:  # as for its first request: it costs its course alone
        if isinstance(error, PartnersApiError) and error.fatal:
            raise  # refused credentials: no course can be fetched
        return str(error) if isinstance(error, PartnersApiError) else error_line(error)
    try:
        return again, again.parse()
    except Exception as error:
        await client.forget(again.page_urls)
        return contract.unreadable_body(error)


@dataclass(frozen=True)
class _CheckedReports:
    """Each run's report as this night's check of the courses was served (`changes`)."""

    digests: Mapping[str, str] = field(default_factory=dict)  # run uuid → digest
    not_modified: Mapping[str, bool] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)  # course → why it failed the check

    def or_request(self, client: PartnersApiClient) -> Callable[[str], Awaitable[RawReport]]:
        """A run's report from the cache if the check was served it, else requested."""

        async def report(run: str) -> RawReport:
            digest = self.digests.get(run)
            if digest is not None:
                kept = await client.kept_report(
                    run, digest, not_modified=self.not_modified.get(run, False)
                )
                if kept is not None:
                    return kept
            return await client.enrolment_report(run)

        return report


def _checked_reports(runs: pl.DataFrame) -> _CheckedReports:
    """What `course_runs` says its check was served (nothing, from a version before the check)."""
    if changes.REPORT_DIGEST not in runs.columns:
        return _CheckedReports()
    checked = runs.filter(pl.col(changes.REPORT_DIGEST).is_not_null())
    failed = runs.filter(pl.col(changes.REPORT_ERROR).is_not_null())
    return _CheckedReports(
        dict(checked.select("run_uuid", changes.REPORT_DIGEST).iter_rows()),
        dict(checked.select("run_uuid", changes.REPORT_NOT_MODIFIED).iter_rows()),
        dict(failed.select("course_uuid", changes.REPORT_ERROR).unique().iter_rows()),
    )


def _course_report(
    course: str,
    parsed: list[Fetched],
    fingerprint: str,
    facts: dict[str, Any],
    policy: QuarantinePolicy | None,
) -> Computed | Failed:
    """One course's reports as one frame, or its refusal for too much quarantined."""
    frame = (
        pl.concat([fetched.records for fetched in parsed])
        if parsed
        else pl.DataFrame(schema=contract.ENROLMENT_SCHEMA)
    )
    quarantined = (
        pl.concat([fetched.quarantine for fetched in parsed])
        if parsed
        else contract.empty_quarantine()
    )
    facts = {
        **facts,
        fact_names.MEMBERSHIPS: frame["membership_uuid"].n_unique(),
        fact_names.QUARANTINED_RECORDS: quarantined.height,
        fact_names.QUARANTINED: quarantine_reasons(quarantined),
    }
    refusal = (
        quarantine_refusal(
            quarantined,
            frame.height,
            policy.max_share,
            allowed=course in policy.allowed_courses,
        )
        if policy
        else None
    )
    if refusal:
        return Failed(refusal, {**facts, fact_names.STATUS: fact_names.STATUS_REFUSED})
    return Computed(frame, {REPORT_FINGERPRINT: fingerprint, COURSE_UUID: course}, facts)


def quarantine_reasons(quarantine: pl.DataFrame) -> dict[str, int]:
    """How many records were quarantined for each reason."""
    if quarantine.is_empty():
        return {}
    return dict(quarantine.group_by("reason").len().sort("reason").iter_rows())


def courses_to_skip(engine: Engine, runs: pl.DataFrame, courses: list[str]) -> dict[str, str]:
    """Course → the report fingerprint it was last synced from, for each course whose platform
    side is what it was then (change_tracking): `fetch_enrolments` skips a course whose reports
    still have that fingerprint."""
    generation = change_tracking.refresh_linking_state(engine)
    activity_of = activities_of(runs)
    with engine.connect() as connection:
        states = sync_store.last_course_states(connection, courses)
        summaries = change_tracking.achievement_summaries(
            connection, {activity_of[c] for c in states if c in activity_of}
        )
    return {
        course: state.report_fingerprint
        for course, state in states.items()
        if course in activity_of
        and state.report_fingerprint
        and state.platform_fingerprint
        == change_tracking.platform_fingerprint(
            activity_of[course], summaries.get(activity_of[course]), generation
        )
    }


def quarantine_refusal(
    quarantined: pl.DataFrame, valid: int, max_share: float, *, allowed: bool = False
) -> str | None:
    """Why a course is not applied from the valid part of a report mostly quarantined, or None.

    Like the shrink breaker: a report whose records are largely unreadable is more likely an API
    fault than a truth, and applying the fraction left would move learners on partial data.
    """
    total = quarantined.height + valid
    if allowed or total == 0:
        return None
    share = quarantined.height / total
    if share <= max_share:
        return None
    reason = quarantined.group_by("reason").len().sort("len", "reason", descending=[True, False])
    top = reason["reason"][0]
    return (
        f"refused: {quarantined.height} of {total} records of its report quarantined "
        f"({share:.0%} > {max_share:.0%}), most often: {top}; rerun with "
        "--allow-quarantine for this course to apply the rest"
    )
