"""The two-step sync, step by step, for any set of courses at once.

Each function is one asset's work: it takes the Partners API client and the platform engine,
reads in bulk, and returns frames keyed by course. The rules themselves live in `rules/`; the
reads and writes in `platform/sync_store`. Dagster assets are thin wrappers around these, and so
is anything else that needs the same path (the on-demand resync).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

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
from sync_assets.settings import course_lock_timeout_seconds

UTC_TIME = pl.Datetime("us", "UTC")
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


@dataclass(frozen=True)
class CourseEnrolments:
    by_course: dict[str, pl.DataFrame]  # every course that did not fail and was not skipped
    quarantine: pl.DataFrame
    unchanged_runs: frozenset[str]
    changed_runs: frozenset[str]
    failed: dict[str, str] = field(default_factory=dict)  # course → why
    # Each course's reports as served (change_tracking.report_fingerprint), failed ones aside.
    report_fingerprints: dict[str, str] = field(default_factory=dict)
    # Courses whose reports are the ones they were last synced from (see `fetch_enrolments`).
    skipped: frozenset[str] = frozenset()


async def fetch_enrolments(
    client: PartnersApiClient,
    runs: pl.DataFrame,
    courses: Iterable[str],
    skip_if_reports: Mapping[str, str] | None = None,
) -> CourseEnrolments:
    """Every report of the courses' runs, each requested once, split by course.

    `skip_if_reports`: course → the report fingerprint it was last synced from, for courses whose
    platform side has not changed since. A course whose reports still have that fingerprint is
    skipped: not parsed (its 304s are not even decoded), and named in `skipped`.
    """
    wanted = sorted(set(courses))
    skip_if_reports = skip_if_reports or {}
    course_runs = runs.filter(pl.col("course_uuid").is_in(wanted))
    runs_of = {
        course: list(rows.select("run_uuid", "start_time").iter_rows())
        for (course,), rows in course_runs.partition_by("course_uuid", as_dict=True).items()
    }
    fetch = or_failure(client.enrolment_report)
    failed: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    skipped: set[str] = set()
    records: list[pl.DataFrame] = []
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
            failed[course] = f"reports: {error_line(error)}"
            return
        errors = [
            (run, answer)
            for (run, _), answer in zip(runs, reports, strict=True)
            if isinstance(answer, PartnersApiError)
        ]
        if errors:
            failed[course] = f"report of run {errors[0][0]}: {errors[0][1]}"
            return
        fingerprint = change_tracking.report_fingerprint(
            runs, {report.run_uuid: report.digest for report in reports}
        )
        unchanged_since_synced = skip_if_reports.get(course) == fingerprint
        parsed: list[Fetched] = []
        if not unchanged_since_synced:
            for report in reports:
                try:
                    parsed.append(report.parse())
                except Exception as error:  # any body, however hostile, costs its course only
                    # Its pages may be 304s of a cached body: tomorrow would fail on it again.
                    await client.forget(report.page_urls)
                    failed[course] = (
                        f"report of run {report.run_uuid}: {contract.unreadable_body(error)}"
                    )
                    return
        unchanged.update(report.run_uuid for report in reports if report.not_modified)
        changed.update(report.run_uuid for report in reports if not report.not_modified)
        fingerprints[course] = fingerprint
        if unchanged_since_synced:
            skipped.add(course)
            return
        for fetched in parsed:
            records.append(fetched.records.with_columns(course_uuid=pl.lit(course)))
            quarantine.append(fetched.quarantine)

    await client.fan_out(one_course, wanted)
    with_course = (
        pl.concat(records)
        if records
        else pl.DataFrame(schema={**contract.ENROLMENT_SCHEMA, "course_uuid": pl.String})
    )
    records.clear()
    by_course = split_by_course(
        with_course, [c for c in wanted if c not in failed and c not in skipped]
    )
    return CourseEnrolments(
        by_course,
        pl.concat(quarantine) if quarantine else contract.empty_quarantine(),
        frozenset(unchanged),
        frozenset(changed),
        failed,
        fingerprints,
        frozenset(skipped),
    )


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
    failed_courses: dict[str, str] = field(default_factory=dict)  # a look-up failed for good
    quarantine: pl.DataFrame = field(default_factory=contract.empty_quarantine)
    # Left unlinked: one external id, the email of several users (rules.linking.AMBIGUOUS_SCHEMA).
    ambiguous: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=AMBIGUOUS_SCHEMA))
    # Stored links R3 disagrees with, kept as they are (rules.linking.CONFLICT_SCHEMA).
    conflicts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CONFLICT_SCHEMA))
    # The generation of what linking read (change_tracking): the links are as of it.
    linking_generation: int = 0


async def link_memberships(
    client: PartnersApiClient,
    engine: Engine,
    enrolments_by_course: Mapping[str, pl.DataFrame],
    now: datetime,
) -> tuple[dict[str, pl.DataFrame], LinkingStats]:
    """Step one for many courses at once: each unknown membership is fetched once, ever (R2).

    Memberships fetched before and still unlinked are matched again locally (a teacher may have
    joined the platform since), without another request.
    """
    if not enrolments_by_course:
        # Every course was skipped as unchanged (or failed): nothing to link, so the platform
        # check is not made again. On `large` it reads ~1M links; the enrolments step has just
        # made it, and a change since is seen by the next night's check, as any later change is.
        return {}, LinkingStats()
    all_uuids = sorted(
        set().union(*(set(frame["membership_uuid"]) for frame in enrolments_by_course.values()))
        if enrolments_by_course
        else set()
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
    course_memberships = (
        pl.concat(
            [
                frame.select("membership_uuid").unique().with_columns(course_uuid=pl.lit(course))
                for course, frame in enrolments_by_course.items()
            ],
            how="vertical_relaxed",
        ).sort("membership_uuid")
        if enrolments_by_course
        else pl.DataFrame(schema={"membership_uuid": pl.String, "course_uuid": pl.String})
    )
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
        failed_courses=failed_courses,
        quarantine=fetched.quarantine,
        ambiguous=ambiguous_emails(candidates, users),
        conflicts=link_conflicts(stored_links, users),
        linking_generation=generation,
    )
    return by_course, stats


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
    enrolments_by_course: Mapping[str, pl.DataFrame],
    linked_by_course: Mapping[str, pl.DataFrame],
    runs: pl.DataFrame,
) -> dict[str, pl.DataFrame]:
    return {
        course: latest_enrolments(
            enrolments,
            linked_by_course.get(course, pl.DataFrame(schema=LINKED_SCHEMA)).filter(
                pl.col("user_id").is_not_null()
            ),
            runs,
        ).with_columns(course_uuid=pl.lit(course))
        for course, enrolments in enrolments_by_course.items()
    }


# --- step two: achievements (R7–R12) -----------------------------------------------------------


@dataclass
class CourseOutcome:
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


def sync_course(
    engine: Engine,
    course: str,
    activity_id: str,
    enrolments: pl.DataFrame,
    latest: pl.DataFrame,
    linked: pl.DataFrame,
    *,
    now: datetime,
    previous_count: int | None,
    breaker: CircuitBreaker,
    dry_run: bool,
    dagster_run_id: str | None,
    record_course_state: bool = True,
    lock_timeout_seconds: float | None = None,
    applied_from: AppliedFrom | None = None,
    previous: sync_store.CourseState | None = None,
) -> CourseOutcome:
    """Plan one course and, unless refused or dry, commit it in one transaction.

    The plan and its writes happen under the course's writer lock (`transactions`): a writer that
    overlaps with another plans from what the other committed, so nothing is applied twice. A
    writer that cannot get the lock in time raises `CourseBusyError`.

    With `record_course_state`, the transaction also records the report's size (the circuit
    breaker's reference) and, given `applied_from`, the fingerprints a later night compares to
    skip the course: its reports' and the platform side's as this write leaves it. Only what
    differs from `previous` is written (R13).
    """
    if dry_run:
        with engine.connect() as connection:
            return _plan_outcome(connection, course, activity_id, enrolments, latest, linked, now)[
                1
            ]
    timeout = (
        course_lock_timeout_seconds() if lock_timeout_seconds is None else lock_timeout_seconds
    )
    with transactions.course_write_transaction(
        engine, course, timeout_seconds=timeout
    ) as connection:
        started = time.perf_counter()
        batch, outcome = _plan_outcome(
            connection, course, activity_id, enrolments, latest, linked, now
        )
        planned = time.perf_counter()
        outcome.plan_seconds = planned - started
        outcome.refused = breaker.refusal(course, previous_count, enrolments.height)
        if outcome.refused:
            return outcome
        if previous is None and previous_count is not None:
            previous = sync_store.CourseState(previous_count)
        with counting_statements(engine) as statements:
            new_links = change_tracking.links_to_write(connection, batch.memberships)
            outcome.applied = sync_store.write_course_sync(
                connection, batch, dagster_run_id=dagster_run_id
            )
            change_tracking.account_links(connection, new_links)
            if record_course_state:
                state = _state_after(
                    connection, activity_id, enrolments.height, applied_from, outcome.applied
                )
                if state != previous:
                    sync_store.record_course_state(
                        connection,
                        course,
                        state.enrolment_count,
                        dagster_run_id,
                        report_fingerprint=state.report_fingerprint,
                        platform_fingerprint=state.platform_fingerprint,
                    )
                    outcome.applied.course_state = 1
            failpoints.reached("activity_progress.before_course_commit")
    outcome.write_seconds = time.perf_counter() - planned
    outcome.sql_statements = statements[0]
    return outcome


@dataclass(frozen=True)
class AppliedFrom:
    """What a course's write was computed from: its reports' fingerprint, and the linking
    generation its links were made under (both known before linking ran, in `enrolments`)."""

    report_fingerprint: str
    linking_generation: int


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


def _plan_outcome(
    connection: Connection,
    course: str,
    activity_id: str,
    enrolments: pl.DataFrame,
    latest: pl.DataFrame,
    linked: pl.DataFrame,
    now: datetime,
) -> tuple[sync_store.CourseSyncBatch, CourseOutcome]:
    batch, _ = plan_course(connection, course, activity_id, latest, linked, now)
    return batch, CourseOutcome(
        course_uuid=course,
        activity_id=activity_id,
        enrolments=enrolments.height,
        learners=latest.height,
        links_made=linked.filter(pl.col("new_link")).height,
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
