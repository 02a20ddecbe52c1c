"""The two-step sync, step by step, for any set of courses at once.

Each function is one asset's work: it takes the Partners API client and the platform engine,
reads in bulk, and returns frames keyed by course. The rules themselves live in `rules/`; the
reads and writes in `platform/sync_store`. Dagster assets are thin wrappers around these, and so
is anything else that needs the same path (the on-demand resync).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets import failpoints
from sync_assets.error_text import error_line
from sync_assets.partners_api import contract
from sync_assets.partners_api.client import (
    Fetched,
    Memberships,
    PartnersApiClient,
    PartnersApiError,
    or_failure,
)
from sync_assets.platform import change_tracking, sync_store, transactions
from sync_assets.pseudonyms import pseudonym
from sync_assets.rules.achievements import achievement_changes
from sync_assets.rules.latest_enrolment import latest_enrolments
from sync_assets.rules.linking import (
    AMBIGUOUS_SCHEMA,
    CONFLICT_SCHEMA,
    ambiguous_emails,
    link_conflicts,
    match_memberships,
)
from sync_assets.rules.programmes import CSA, assign_programmes, csa_auto_enrolments
from sync_assets.settings import course_lock_timeout_seconds, pseudonym_key
from sync_assets.sync import fact_names
from sync_assets.sync.outcomes import Computed, Failed, Outcome, Outcomes, Unchanged
from sync_assets.wording import counted

UTC_TIME = pl.Datetime("us", "UTC")


class Logger(Protocol):
    def warning(self, msg: str) -> None: ...


COURSE_RUNS_SCHEMA = {
    **contract.COURSE_RUN_SCHEMA,
    "known": pl.Boolean,
    "activity_id": pl.String,
}
# The linking step's output, stored between steps: links only. External learner ids (emails) are
# personal data; what the API said is written to the platform database by the linking step itself
# (keep_fetched_memberships) and never reaches asset storage.
LINKED_SCHEMA = {
    "membership_uuid": pl.String,
    "user_id": pl.String,  # a usable link (user not forgotten), or null
    "new_link": pl.Boolean,  # linked by this sync
    "write": pl.Boolean,  # a row for future_learn_memberships
    "fetched_at": UTC_TIME,
    "linked_at": UTC_TIME,
    "gone_at": UTC_TIME,
}
MEMBERSHIP_ROW_COLUMNS = ["membership_uuid", "user_id", "fetched_at", "linked_at", "gone_at"]


# --- course runs (R1) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CourseRuns:
    runs: pl.DataFrame  # COURSE_RUNS_SCHEMA: every run, with whether its course is known
    quarantine: pl.DataFrame
    not_modified: bool

    def known_course_uuids(self) -> list[str]:
        return sorted(set(self.runs.filter("known")["course_uuid"]))

    def unknown_courses(self, ignored: Iterable[str] = ()) -> pl.DataFrame:
        """R1: each unknown course with the title of its first run, less the ignored ones."""
        return (
            self.runs.filter(~pl.col("known") & ~pl.col("course_uuid").is_in(list(ignored)))
            .sort("start_time", "run_uuid")
            .group_by("course_uuid", maintain_order=True)
            .agg(pl.col("title").first())
            .sort("course_uuid")
        )


def course_titles(runs: pl.DataFrame) -> dict[str, str]:
    """Each course's title as its latest run calls it: what the course is called now."""
    return dict(
        runs.sort("start_time", "run_uuid", descending=True, nulls_last=True)
        .group_by("course_uuid", maintain_order=True)
        .agg(pl.col("title").first())
        .iter_rows()
    )


async def fetch_course_runs(client: PartnersApiClient, engine: Engine) -> CourseRuns:
    fetched = await client.course_runs()
    with engine.connect() as connection:
        known = sync_store.known_courses(connection)
    runs = (
        fetched.records.join(
            known.select("course_uuid", "activity_id"), on="course_uuid", how="left"
        )
        .with_columns(known=pl.col("activity_id").is_not_null())
        .select(list(COURSE_RUNS_SCHEMA))
    )
    return CourseRuns(runs, fetched.quarantine, fetched.not_modified)


# --- enrolments ------------------------------------------------------------------------------


# Stamped on a course's frames: what it is computed from, for the progress step to record with
# the course's write (change_tracking), so a later night can skip the course.
REPORT_FINGERPRINT = "report_fingerprint"
LINKING_GENERATION = "linking_generation"


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a course's report is refused for the share of its records quarantined."""

    max_share: float = 0.1
    allowed_courses: frozenset[str] = frozenset()  # applied however many are quarantined


@dataclass(frozen=True)
class CourseEnrolments:
    # Each course: its reports as one frame (stamped with their fingerprint), failed, or
    # unchanged (its reports are the ones it was last synced from, see `fetch_enrolments`).
    outcomes: dict[str, Outcome]
    quarantine: pl.DataFrame
    unchanged_runs: frozenset[str]
    changed_runs: frozenset[str]

    def frames(self) -> dict[str, pl.DataFrame]:
        """The frames of the courses that were fetched and read (neither failed nor skipped)."""
        return {c: o.frame for c, o in self.outcomes.items() if isinstance(o, Computed)}

    def failure(self, course: str) -> str | None:
        outcome = self.outcomes.get(course)
        return outcome.reason if isinstance(outcome, Failed) else None

    def summary(self) -> str:
        kinds = Counter(type(outcome) for outcome in self.outcomes.values())
        return (
            f"{counted(len(self.outcomes), 'course')}: "
            f"{counted(len(self.changed_runs), 'report')} changed, "
            f"{len(self.unchanged_runs)} unchanged (304), "
            f"{counted(self.quarantine.height, 'record')} quarantined, "
            f"{counted(kinds[Failed], 'course')} failed, "
            f"{kinds[Unchanged]} skipped as unchanged"
        )


async def fetch_enrolments(
    client: PartnersApiClient,
    runs: pl.DataFrame,
    courses: Iterable[str],
    skip_if_reports: Mapping[str, str] | None = None,
    policy: QuarantinePolicy | None = None,
) -> CourseEnrolments:
    """Every report of the courses' runs, each requested once, as one outcome per course.

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
    fetch = or_failure(client.enrolment_report)
    outcomes: dict[str, Outcome] = {}
    quarantine: list[pl.DataFrame] = []
    unchanged: set[str] = set()
    changed: set[str] = set()

    async def one_course(course: str) -> None:
        # Course by course, `concurrency` courses at a time: a skipped course's unparsed pages
        # are dropped as soon as its last report is in.
        runs = runs_of.get(course, [])
        try:
            reports = [await fetch(run) for run, _ in runs]
        except Exception as error:  # anything unforeseen in one course's requests costs it alone
            if isinstance(error, PartnersApiError) and error.fatal:
                raise  # refused credentials: no course can be fetched
            outcomes[course] = Failed(f"reports: {error_line(error)}")
            return
        errors = [
            (run, answer)
            for (run, _), answer in zip(runs, reports, strict=True)
            if isinstance(answer, PartnersApiError)
        ]
        if errors:
            outcomes[course] = Failed(f"report of run {errors[0][0]}: {errors[0][1]}")
            return
        fingerprint = change_tracking.report_fingerprint(
            runs, {report.run_uuid: report.digest for report in reports}
        )
        facts = {
            fact_names.RUNS: len(reports),
            fact_names.REPORTS_UNCHANGED: sum(report.not_modified for report in reports),
        }
        if skip_if_reports.get(course) == fingerprint:
            unchanged.update(report.run_uuid for report in reports if report.not_modified)
            changed.update(report.run_uuid for report in reports if not report.not_modified)
            outcomes[course] = Unchanged(facts)
            return
        parsed: list[Fetched] = []
        for report in reports:
            try:
                parsed.append(report.parse())
            except Exception as error:  # any body, however hostile, costs its course only
                # Its pages may be 304s of a cached body: tomorrow would fail on it again.
                await client.forget(report.page_urls)
                why = f"report of run {report.run_uuid}: {contract.unreadable_body(error)}"
                outcomes[course] = Failed(why)
                return
        unchanged.update(report.run_uuid for report in reports if report.not_modified)
        changed.update(report.run_uuid for report in reports if not report.not_modified)
        outcomes[course] = _course_report(course, parsed, fingerprint, facts, policy)
        quarantine.extend(fetched.quarantine for fetched in parsed)

    await client.fan_out(one_course, wanted)
    return CourseEnrolments(
        {course: outcomes[course] for course in wanted},
        pl.concat(quarantine) if quarantine else contract.empty_quarantine(),
        frozenset(unchanged),
        frozenset(changed),
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
    return Computed(frame, {REPORT_FINGERPRINT: fingerprint}, facts)


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
    activity_of = dict(
        runs.filter("known").select("course_uuid", "activity_id").unique().iter_rows()
    )
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


# --- step one: linking (R2–R4) ----------------------------------------------------------------


@dataclass
class LinkingStats:
    memberships: int = 0
    already_linked: int = 0
    looked_up: int = 0
    found: int = 0
    gone: int = 0
    linked_by_id: int = 0
    linked_by_email: int = 0
    relinked_locally: int = 0
    unlinked: int = 0
    kept_unlinked: int = 0  # memberships fetched now, kept before any course is applied
    quarantine: pl.DataFrame = field(default_factory=contract.empty_quarantine)
    # Left unlinked: one external id, the email of several users (rules.linking.AMBIGUOUS_SCHEMA).
    ambiguous: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=AMBIGUOUS_SCHEMA))
    # Stored links R3 disagrees with, kept as they are (rules.linking.CONFLICT_SCHEMA).
    conflicts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CONFLICT_SCHEMA))
    # The generation of what linking read (change_tracking): the links are as of it.
    linking_generation: int = 0

    def summary(self) -> str:
        return (
            f"{counted(self.memberships, 'membership')}: {self.already_linked} linked before, "
            f"{self.looked_up} looked up ({self.gone} gone), "
            f"{self.linked_by_id} linked by id, {self.linked_by_email} by email, "
            f"{self.relinked_locally} relinked without a request"
        )


async def link_memberships(
    client: PartnersApiClient,
    engine: Engine,
    enrolments_by_course: Mapping[str, pl.DataFrame],
    now: datetime,
) -> tuple[dict[str, Computed | Failed], LinkingStats]:
    """Step one for many courses at once: each unknown membership is fetched once, ever (R2).

    Memberships fetched before and still unlinked are matched again locally (a teacher may have
    joined the platform since), without another request. A course with a membership whose
    look-up failed for good fails; the others come back stamped with the linking generation.
    """
    if not enrolments_by_course:
        # Every course was skipped as unchanged (or failed): nothing to link, so the platform
        # check is not made again. On `large` it reads ~1M links; the enrolments step has just
        # made it, and a change since is seen by the next night's check, as any later change is.
        return {}, LinkingStats()
    all_uuids = sorted(
        set().union(*(set(frame["membership_uuid"]) for frame in enrolments_by_course.values()))
    )
    with engine.connect() as connection:
        existing = sync_store.linked_memberships(connection, all_uuids)
        to_fetch = sync_store.memberships_to_look_up(connection, all_uuids)
        unlinked_before = sync_store.unlinked_fetched_memberships(connection, all_uuids)
        stored_links = sync_store.linked_with_external_ids(connection, all_uuids)
    fetched = await client.memberships(to_fetch)
    failpoints.reached("linking.after_lookups")
    kept = keep_fetched_memberships(engine, fetched, now)
    candidates = pl.concat(
        [
            fetched.found.select("membership_uuid", "external_learner_id"),
            unlinked_before.select("membership_uuid", "external_learner_id"),
        ]
    )
    # Users new since the keys were refreshed are matched too; a change linking depends on moves
    # the linking generation on (see change_tracking), so no course is skipped past it.
    generation = change_tracking.refresh_linking_state(engine)
    with engine.connect() as connection:
        external_ids = pl.concat(
            [candidates["external_learner_id"], stored_links["external_learner_id"]]
        )
        users = sync_store.users_matching(connection, external_ids.drop_nulls().to_list())
    new_links = match_memberships(candidates, users)
    linked_now = new_links.select("membership_uuid", "user_id")
    fetched_rows = fetched.found.join(linked_now, on="membership_uuid", how="left").with_columns(
        fetched_at=pl.lit(now, UTC_TIME),
        linked_at=pl.when(pl.col("user_id").is_not_null()).then(pl.lit(now, UTC_TIME)),
    )
    gone_rows = pl.DataFrame(
        {"membership_uuid": fetched.gone, "gone_at": [now] * len(fetched.gone)},
        schema={"membership_uuid": pl.String, "gone_at": UTC_TIME},
    )
    relinked = unlinked_before.select("membership_uuid").join(linked_now, on="membership_uuid")
    relinked = relinked.with_columns(linked_at=pl.lit(now, UTC_TIME))
    is_linked = pl.col("user_id").is_not_null()
    # Only new links are left to write with their course: what was fetched is already stored.
    every = pl.concat(
        [
            _conform(fetched_rows.filter(is_linked), write=True),
            _conform(relinked, write=True),
            _conform(fetched_rows.filter(~is_linked), write=False),
            _conform(gone_rows, write=False),
            _conform(existing, write=False),
        ]
    )
    course_memberships = pl.concat(
        [
            frame.select("membership_uuid").unique().with_columns(course_uuid=pl.lit(course))
            for course, frame in enrolments_by_course.items()
        ],
        how="vertical_relaxed",
    ).sort("membership_uuid")
    # Ordered by sorting the two-column frame before the join: sorting the joined frame after it
    # copied every column, the largest allocation of the step on a million memberships.
    with_course = course_memberships.join(
        every, on="membership_uuid", how="inner", maintain_order="left"
    )
    del course_memberships
    failed_courses = _courses_with_failed_lookups(enrolments_by_course, fetched.failed)
    by_course = split_by_course(
        with_course.select("course_uuid", *every.columns),
        [course for course in enrolments_by_course if course not in failed_courses],
    )
    first_time = new_links.join(fetched.found.select("membership_uuid"), on="membership_uuid")
    by_method = dict(first_time.group_by("matched_by").len().iter_rows())
    ambiguous = ambiguous_emails(candidates, users)
    conflicts = link_conflicts(stored_links, users)
    stats = LinkingStats(
        memberships=len(all_uuids),
        already_linked=existing.height,
        looked_up=len(to_fetch),
        found=fetched.found.height,
        gone=len(fetched.gone),
        linked_by_id=by_method.get("id", 0),
        linked_by_email=by_method.get("email", 0),
        relinked_locally=relinked.height,
        unlinked=len(all_uuids) - existing.height - new_links.height,
        kept_unlinked=kept,
        quarantine=fetched.quarantine,
        ambiguous=ambiguous,
        conflicts=conflicts,
        linking_generation=generation,
    )
    stamps = {LINKING_GENERATION: str(generation)}
    outcomes: dict[str, Computed | Failed] = {
        course: Computed(frame, stamps, _linking_facts(frame, ambiguous, conflicts))
        for course, frame in by_course.items()
    }
    return outcomes | {course: Failed(why) for course, why in failed_courses.items()}, stats


def _linking_facts(
    frame: pl.DataFrame, ambiguous: pl.DataFrame, conflicts: pl.DataFrame
) -> dict[str, Any]:
    """One course's links, and what linking left for the platform team in it, users as
    pseudonyms. `ambiguous`: memberships whose external id is the email of several users (not
    linked); `conflicts`: stored links the external id disagrees with (kept, not re-pointed)."""
    memberships = frame.select("membership_uuid")
    ambiguous = ambiguous.join(memberships, on="membership_uuid")
    conflicts = conflicts.join(memberships, on="membership_uuid")
    key = pseudonym_key()
    return {
        fact_names.LINKED: frame.filter(pl.col("user_id").is_not_null()).height,
        fact_names.LINKS_MADE: frame.filter(pl.col("new_link")).height,
        fact_names.UNLINKED: frame.filter(pl.col("user_id").is_null()).height,
        fact_names.AMBIGUOUS_EMAILS: ambiguous.height,
        fact_names.AMBIGUOUS_EMAIL_USERS: [
            [pseudonym(user, key) for user in users] for users in ambiguous["user_ids"].to_list()
        ],
        fact_names.LINK_CONFLICTS: conflicts.height,
        fact_names.LINK_CONFLICT_USERS: [
            {"linked": pseudonym(linked, key), "external_id_names": pseudonym(matching, key)}
            for linked, matching in conflicts.select(
                "linked_user_id", "matching_user_id"
            ).iter_rows()
        ],
    }


def _courses_with_failed_lookups(
    enrolments_by_course: Mapping[str, pl.DataFrame], failed: Mapping[str, str]
) -> dict[str, str]:
    """Each course with a membership whose look-up failed for good, and the first such failure."""
    if not failed:
        return {}
    courses = {}
    for course, frame in enrolments_by_course.items():
        hit = sorted(set(frame["membership_uuid"]) & failed.keys())
        if hit:
            courses[course] = (
                f"look-up of {len(hit)} membership(s) failed, e.g. {hit[0]}: {failed[hit[0]]}"
            )
    return courses


def keep_fetched_memberships(engine: Engine, fetched: Memberships, now: datetime) -> int:
    """Store what the API said of each membership looked up, before anything else can fail.

    Fetched, not linked: links are written with the course they serve, in its transaction. A
    course refused by the circuit breaker, a failed course or a dry run still keeps what was
    fetched, so no membership is ever asked about twice (R2).
    """
    rows = pl.concat(
        [
            fetched.found.select(
                "membership_uuid",
                "external_learner_id",
                "learner_uuid",
                pl.lit(now, UTC_TIME).alias("fetched_at"),
            ),
            pl.DataFrame(
                {"membership_uuid": fetched.gone, "gone_at": [now] * len(fetched.gone)},
                schema={"membership_uuid": pl.String, "gone_at": UTC_TIME},
            ),
        ],
        how="diagonal",
    )
    if rows.is_empty():
        return 0
    with transactions.write_transaction(engine) as connection:
        return sync_store.upsert_memberships(connection, rows)


def split_by_course(frame: pl.DataFrame, courses: Iterable[str]) -> dict[str, pl.DataFrame]:
    """One frame per course (without its `course_uuid` column), every course present.

    One pass over the rows: a filter per course would cost courses × rows, which on a thousand
    courses and millions of enrolments is most of the run.
    """
    parts = frame.partition_by("course_uuid", as_dict=True, include_key=False, maintain_order=True)
    empty = frame.clear().drop("course_uuid")
    return {course: parts.get((course,), empty) for course in courses}


def _conform(frame: pl.DataFrame, *, write: bool) -> pl.DataFrame:
    """Any subset of LINKED_SCHEMA's columns, as the whole schema (missing columns null)."""
    return (
        frame.with_columns(
            [
                pl.lit(None, dtype).alias(name)
                for name, dtype in LINKED_SCHEMA.items()
                if name not in frame.columns
            ]
        )
        .with_columns(
            write=pl.lit(write),
            new_link=pl.lit(write) & pl.col("user_id").is_not_null(),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in LINKED_SCHEMA.items()])
    )


# --- step two: latest enrolments (R5–R6) -------------------------------------------------------


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


# --- step two: achievements (R7–R12) -----------------------------------------------------------


@dataclass
class CourseWrite:
    """What one course's sync did (or, in a dry run, would do)."""

    course_uuid: str
    activity_id: str
    enrolments: int
    learners: int
    links_made: int
    changes: pl.DataFrame  # the achievement changes (sync_store.ACHIEVEMENT_CHANGE_SCHEMA)
    applied: sync_store.AppliedChanges | None = None  # None in a dry run or when refused
    refused: str | None = None  # why progress was not applied (circuit breaker)
    plan_seconds: float = 0.0  # reads and rules
    write_seconds: float = 0.0  # the course's transaction
    sql_statements: int = 0  # statements the transaction sent

    @property
    def created(self) -> int:
        return self.changes.filter(pl.col("previous_state").is_null()).height

    @property
    def updated(self) -> int:
        return self.changes.height - self.created

    def became(self, state: str) -> int:
        return self.changes.filter(
            (pl.col("state") == state) & (pl.col("previous_state").fill_null("enrolled") != state)
        ).height

    def facts(self, dry_run: bool) -> dict[str, Any]:
        """What a course's partition of activity_progress shows."""
        applied = self.applied
        if self.refused:
            status = fact_names.STATUS_REFUSED
        else:
            status = fact_names.STATUS_DRY_RUN if dry_run else fact_names.STATUS_APPLIED
        return {
            fact_names.STATUS: status,
            fact_names.ENROLMENTS: self.enrolments,
            fact_names.LEARNERS: self.learners,
            fact_names.LINKS_MADE: self.links_made,
            fact_names.ACHIEVEMENTS_CREATED: self.created,
            fact_names.ACHIEVEMENTS_UPDATED: self.updated,
            fact_names.ACHIEVEMENTS_COMPLETED: self.became("complete"),
            fact_names.ACHIEVEMENTS_DROPPED: self.became("dropped"),
            "transitions_written": applied.transitions if applied else 0,
            "completion_events_written": applied.completion_events if applied else 0,
            "programme_enrolments_written": applied.enrolments if applied else 0,
            "rows_written": applied.rows_written if applied else 0,
            # Planned from a state another writer had already changed: not written.
            "stale_changes_not_written": applied.stale if applied else 0,
            fact_names.SQL_STATEMENTS: self.sql_statements,
            fact_names.PLAN_SECONDS: round(self.plan_seconds, 4),
            fact_names.WRITE_SECONDS: round(self.write_seconds, 4),
            **({fact_names.REFUSED: self.refused} if self.refused else {}),
        }


@dataclass(frozen=True)
class CircuitBreaker:
    """Refuse progress from a report that shrank by more than `max_shrink_share` since last time."""

    max_shrink_share: float = 0.2
    allowed_courses: frozenset[str] = frozenset()

    def refusal(self, course: str, previous: int | None, current: int) -> str | None:
        if previous is None or previous == 0 or course in self.allowed_courses:
            return None
        shrink = (previous - current) / previous
        if shrink > self.max_shrink_share:
            return (
                f"enrolment report shrank from {previous} to {current} ({shrink:.0%} > "
                f"{self.max_shrink_share:.0%}); rerun with this course allowed if it is real"
            )
        return None


def plan_course(
    connection: Connection,
    course: str,
    activity_id: str,
    latest: pl.DataFrame,
    linked: pl.DataFrame,
    now: datetime,
) -> tuple[sync_store.CourseSyncBatch, pl.DataFrame]:
    """The batch one course's sync would write: links, achievements (R7–R11), enrolments (R12).

    Read through `connection`, so that a writer holding the course's lock plans from what the
    previous writer committed.
    """
    users = latest["user_id"].to_list()
    current = sync_store.achievements_for_course(connection, activity_id, users)
    programmes = sync_store.activity_programmes(connection, [activity_id])
    changes = achievement_changes(latest, current, activity_id=activity_id, now=now)
    enrolments = sync_store.programme_enrolments(connection, changes["user_id"].to_list())
    changes = assign_programmes(changes, programmes, enrolments)
    csa_ids = programmes.filter(pl.col("programme_slug") == CSA)["programme_id"].to_list()
    csa = (
        csa_auto_enrolments(changes, programmes, enrolments, csa_ids[0])
        if csa_ids
        else pl.DataFrame(
            schema={"user_id": pl.String, "programme_id": pl.String, "auto_enrolled": pl.Boolean}
        )
    )
    memberships = linked.filter("write").select(MEMBERSHIP_ROW_COLUMNS)
    batch = sync_store.CourseSyncBatch(
        memberships=memberships,
        achievement_changes=changes.select(list(sync_store.ACHIEVEMENT_CHANGE_SCHEMA)),
        programme_enrolments=csa,
    )
    return batch, changes


@dataclass(frozen=True)
class CourseInputs:
    """One course's inputs to its write: its report, its latest enrolments, its links."""

    course_uuid: str
    activity_id: str
    enrolments: pl.DataFrame
    latest: pl.DataFrame
    linked: pl.DataFrame


@dataclass(frozen=True)
class WriteOptions:
    """How courses are written: the same for every course of a run."""

    now: datetime
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    dry_run: bool = False
    dagster_run_id: str | None = None
    # Record the report's size and fingerprints (the breaker's reference; skipping unchanged
    # courses): not for a resync of chosen learners, which applies part of a course.
    record_course_state: bool = True
    lock_timeout_seconds: float | None = None  # default: course_lock_timeout_seconds()


def sync_course(
    engine: Engine,
    course: CourseInputs,
    options: WriteOptions,
    *,
    previous: sync_store.CourseState | None = None,
    applied_from: AppliedFrom | None = None,
) -> CourseWrite:
    """Plan one course and, unless refused or dry, commit it in one transaction.

    The plan and its writes happen under the course's writer lock (`transactions`): a writer that
    overlaps with another plans from what the other committed, so nothing is applied twice. A
    writer that cannot get the lock in time raises `CourseBusyError`.

    With `options.record_course_state`, the transaction also records the report's size (the
    circuit breaker's reference, compared with `previous`) and, given `applied_from`, the
    fingerprints a later night compares to skip the course: its reports' and the platform side's
    as this write leaves it. Only what differs from `previous` is written (R13).
    """
    if options.dry_run:
        with engine.connect() as connection:
            return _plan_write(connection, course, options.now)[1]
    timeout = (
        course_lock_timeout_seconds()
        if options.lock_timeout_seconds is None
        else options.lock_timeout_seconds
    )
    with transactions.course_write_transaction(
        engine, course.course_uuid, timeout_seconds=timeout
    ) as connection:
        started = time.perf_counter()
        batch, write = _plan_write(connection, course, options.now)
        planned = time.perf_counter()
        write.plan_seconds = planned - started
        write.refused = options.breaker.refusal(
            course.course_uuid,
            previous.enrolment_count if previous else None,
            course.enrolments.height,
        )
        if write.refused:
            return write
        with counting_statements(engine) as statements:
            new_links = change_tracking.links_to_write(connection, batch.memberships)
            write.applied = sync_store.write_course_sync(
                connection, batch, dagster_run_id=options.dagster_run_id
            )
            change_tracking.account_links(connection, new_links)
            if options.record_course_state:
                state = _state_after(
                    connection,
                    course.activity_id,
                    course.enrolments.height,
                    applied_from,
                    write.applied,
                )
                if state != previous:
                    sync_store.record_course_state(
                        connection,
                        course.course_uuid,
                        state.enrolment_count,
                        options.dagster_run_id,
                        report_fingerprint=state.report_fingerprint,
                        platform_fingerprint=state.platform_fingerprint,
                    )
                    write.applied.course_state = 1
            failpoints.reached("activity_progress.before_course_commit")
    write.write_seconds = time.perf_counter() - planned
    write.sql_statements = statements[0]
    return write


def progress_outcomes(
    engine: Engine,
    courses: list[str],
    activity_of: Mapping[str, str],
    inputs: tuple[Outcomes, Outcomes, Outcomes],
    options: WriteOptions,
    log: Logger,
) -> Iterator[tuple[str, Computed | Failed]]:
    """Step two's second half, course by course: each course's achievement changes, written in
    its own transaction. `inputs`: the enrolments, latest enrolments and links of each course.
    One course failing (or refused by the breaker) stops no other."""
    enrolments, latest, linked = inputs
    with engine.connect() as connection:
        previous = sync_store.last_course_states(connection, courses)
    for course in courses:
        if course not in activity_of:
            yield course, Failed("no activity knows this course any more (R1)")
            continue
        stamped = latest[course]
        assert isinstance(stamped, Computed)
        try:
            write = sync_course(
                engine,
                CourseInputs(
                    course,
                    activity_of[course],
                    enrolments.frame(course),
                    stamped.frame,
                    linked.frame(course),
                ),
                options,
                previous=previous.get(course),
                applied_from=AppliedFrom.of(stamped.stamps),
            )
        except Exception as error:  # one course failing must not stop the others
            yield course, Failed(error_line(error))  # stored and sent: one line, no email
            continue
        if write.applied is not None and write.applied.stale:
            log.warning(
                f"course {course}: {write.applied.stale} achievement changes not written: "
                "another writer changed them after they were planned"
            )
        if write.applied is not None and write.applied.rows_written:
            failpoints.reached("activity_progress.after_course_commit")
        facts = write.facts(options.dry_run)
        if write.refused:
            yield course, Failed(write.refused, facts)
        else:
            yield course, Computed(write.changes, facts=facts)


@dataclass(frozen=True)
class AppliedFrom:
    """What a course's write was computed from: its reports' fingerprint, and the linking
    generation its links were made under (both known before linking ran, in `enrolments`)."""

    report_fingerprint: str
    linking_generation: int

    @classmethod
    def of(cls, stamps: Mapping[str, str]) -> AppliedFrom | None:
        """What a course's latest enrolments were computed from, if their stamps say."""
        if REPORT_FINGERPRINT not in stamps or LINKING_GENERATION not in stamps:
            return None
        return cls(stamps[REPORT_FINGERPRINT], int(stamps[LINKING_GENERATION]))


def _state_after(
    connection: Connection,
    activity_id: str,
    enrolment_count: int,
    applied_from: AppliedFrom | None,
    applied: sync_store.AppliedChanges,
) -> sync_store.CourseState:
    """The course's state as this write leaves it, read in its transaction (its own writes in).

    No fingerprint when it is not known what the course was applied from, or when a planned
    change was not written because another writer had changed the row: the platform then holds
    something this sync did not compute, and the next night must recompute the course.
    """
    if applied_from is None or applied.stale:
        return sync_store.CourseState(enrolment_count)
    summary = change_tracking.achievement_summaries(connection, [activity_id]).get(activity_id)
    return sync_store.CourseState(
        enrolment_count,
        applied_from.report_fingerprint,
        change_tracking.platform_fingerprint(activity_id, summary, applied_from.linking_generation),
    )


def _plan_write(
    connection: Connection, course: CourseInputs, now: datetime
) -> tuple[sync_store.CourseSyncBatch, CourseWrite]:
    batch, _ = plan_course(
        connection, course.course_uuid, course.activity_id, course.latest, course.linked, now
    )
    return batch, CourseWrite(
        course_uuid=course.course_uuid,
        activity_id=course.activity_id,
        enrolments=course.enrolments.height,
        learners=course.latest.height,
        links_made=course.linked.filter(pl.col("new_link")).height,
        changes=batch.achievement_changes,  # only what is written: it is kept for every course
    )


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[int]]:
    """Count the SQL statements sent while the block runs (for metadata and benchmarks)."""
    count = [0]

    def seen(*_args: object) -> None:
        count[0] += 1

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield count
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
