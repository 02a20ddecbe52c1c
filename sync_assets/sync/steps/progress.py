"""Step two, second half (R7–R12): each course's achievement changes planned and written in one
transaction, under the course's writer lock."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from sync_assets import failpoints
from sync_assets.error_text import error_line
from sync_assets.platform import change_tracking, sync_store, transactions
from sync_assets.platform.transient import is_transient
from sync_assets.rules.achievements import achievement_changes
from sync_assets.rules.programmes import CSA, assign_programmes, csa_auto_enrolments
from sync_assets.settings import course_lock_timeout_seconds
from sync_assets.sync import fact_names, row_digests
from sync_assets.sync.outcomes import Computed, Failed, Outcomes
from sync_assets.sync.steps.course_runs import activities_of
from sync_assets.sync.steps.enrolments import REPORT_FINGERPRINT
from sync_assets.sync.steps.linking import LINKING_GENERATION, MEMBERSHIP_ROW_COLUMNS
from sync_assets.wording import counted

# A course's write after a transient database error: up to three more times, within ~1, ~2, ~4 s
# (random, exponential); a restart or failover that lasts longer fails the course, and the run.
COURSE_WRITE_ATTEMPTS = 4
COURSE_RETRY_SECONDS = 1.0


class Logger(Protocol):
    def warning(self, msg: str) -> None: ...


@dataclass
class CourseWrite:
    """What one course's sync did (or, in a dry run, would do)."""

    course_uuid: str
    activity_id: str
    enrolments: int
    learners: int
    links_made: int
    learners_planned: int  # the learners whose rows changed, or every learner (whole course)
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
            fact_names.LEARNERS_PLANNED: self.learners_planned,
            fact_names.LINKS_MADE: self.links_made,
            fact_names.ACHIEVEMENTS_CREATED: self.created,
            fact_names.ACHIEVEMENTS_UPDATED: self.updated,
            fact_names.ACHIEVEMENTS_COMPLETED: self.became("complete"),
            fact_names.ACHIEVEMENTS_DROPPED: self.became("dropped"),
            fact_names.TRANSITIONS_WRITTEN: applied.transitions if applied else 0,
            fact_names.COMPLETION_EVENTS_WRITTEN: applied.completion_events if applied else 0,
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
    # The runs (run_uuid, start_time): with them, the course's row digests are kept and compared
    # (sync/row_digests.py); without, the course is planned whole and its digests left alone.
    runs: pl.DataFrame | None = None


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
    # Plan only the learners whose report rows changed since the course's last write, when its
    # platform side is as that write left it (sync/row_digests.py). Off for a recomputation
    # (`--recompute-unchanged`), which must replan every learner to check the others.
    changed_rows_only: bool = False

    def lock_timeout(self) -> float:
        if self.lock_timeout_seconds is None:
            return course_lock_timeout_seconds()
        return self.lock_timeout_seconds


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
            return _plan_write(connection, course, options.now, None)[1]
    # Pure work before the lock: on SQLite the lock is the database's, and every other run's
    # course writes wait for it.
    digests = _membership_digests(course, options)
    encoded = None if digests is None else row_digests.encode(digests)
    with transactions.course_write_transaction(
        engine, course.course_uuid, timeout_seconds=options.lock_timeout()
    ) as connection:
        started = time.perf_counter()
        rows = _row_scope(connection, course, options, applied_from, digests)
        batch, write = _plan_write(connection, course, options.now, rows.users)
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
                state = _state_after(connection, course, applied_from, write.applied)
                # Digests only beside a platform fingerprint: without one the next write
                # plans the whole course anyway.
                kept = rows.digests if state.platform_fingerprint else None
                if state != previous or not _same_digests(kept, rows.stored):
                    sync_store.record_course_state(
                        connection,
                        course.course_uuid,
                        state.enrolment_count,
                        options.dagster_run_id,
                        report_fingerprint=state.report_fingerprint,
                        platform_fingerprint=state.platform_fingerprint,
                        row_digests=None if kept is None else encoded,
                    )
                    write.applied.course_state = 1
            failpoints.reached("activity_progress.before_course_commit")
    write.write_seconds = time.perf_counter() - planned
    write.sql_statements = statements[0]
    return write


def progress_outcomes(
    engine: Engine,
    courses: list[str],
    runs: pl.DataFrame,
    inputs: tuple[Outcomes, Outcomes, Outcomes],
    options: WriteOptions,
    log: Logger,
) -> Iterator[tuple[str, Computed | Failed]]:
    """Step two's second half, course by course: each course's achievement changes, written in
    its own transaction. `inputs`: the enrolments, latest enrolments and links of each course.
    One course failing (or refused by the breaker) stops no other."""
    enrolments, latest, linked = inputs
    activity_of = activities_of(runs)
    with engine.connect() as connection:
        previous = sync_store.last_course_states(connection, courses)
    for course in courses:
        if course not in activity_of:
            yield course, Failed("no activity knows this course any more (R1)")
            continue
        stamped = latest[course]
        assert isinstance(stamped, Computed)
        course_inputs = CourseInputs(
            course,
            activity_of[course],
            enrolments.frame(course),
            stamped.frame,
            linked.frame(course),
            runs,
        )
        try:
            write = _retrying_transient(
                partial(
                    sync_course,
                    engine,
                    course_inputs,
                    options,
                    previous=previous.get(course),
                    applied_from=AppliedFrom.of(stamped.stamps),
                ),
                course,
                log,
            )
        except transactions.CourseBusyError as error:  # the other writer applies it
            yield course, Failed(str(error), expected=True)
            continue
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


def _retrying_transient(write: Callable[[], CourseWrite], course: str, log: Logger) -> CourseWrite:
    """The course's write, again after a transient database error (a connection dropped by a
    restart or failover, a deadlock, a serialization failure): its transaction was rolled back
    whole, so writing it again is safe; a blip costs seconds, not the course's night. Anything
    else, and a transient error that persists, is the caller's to record."""
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=COURSE_RETRY_SECONDS, max=4 * COURSE_RETRY_SECONDS),
        stop=stop_after_attempt(COURSE_WRITE_ATTEMPTS),
        before_sleep=lambda state: log.warning(
            f"course {course}: transient platform database error, written again "
            f"(attempt {state.attempt_number + 1} of {COURSE_WRITE_ATTEMPTS}): "
            f"{error_line(state.outcome.exception())}"
        ),
        reraise=True,
    )
    return retrying(write)


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
    course: CourseInputs,
    applied_from: AppliedFrom | None,
    applied: sync_store.AppliedChanges,
) -> sync_store.CourseState:
    """The course's state as this write leaves it, read in its transaction (its own writes in).

    No fingerprint when it is not known what the course was applied from, or when a planned
    change was not written because another writer had changed the row: the platform then holds
    something this sync did not compute, and the next night must recompute the course.
    """
    activity_id, enrolment_count = course.activity_id, course.enrolments.height
    if applied_from is None or applied.stale:
        return sync_store.CourseState(enrolment_count)
    summary = change_tracking.achievement_summaries(connection, [activity_id]).get(activity_id)
    return sync_store.CourseState(
        enrolment_count,
        applied_from.report_fingerprint,
        change_tracking.platform_fingerprint(activity_id, summary, applied_from.linking_generation),
    )


@dataclass(frozen=True)
class _RowScope:
    """Which of a course's learners a write plans, and the row digests it leaves stored."""

    digests: pl.DataFrame | None = None  # the course's membership digests now (None: not kept)
    stored: pl.DataFrame | None = None  # as the course's last write left them, if stored
    users: list[str] | None = None  # the learners to plan; None: every learner


def _membership_digests(course: CourseInputs, options: WriteOptions) -> pl.DataFrame | None:
    """The course's membership digests now, if its state is recorded with them."""
    if not options.record_course_state or course.runs is None:
        return None
    return row_digests.membership_digests(course.enrolments, course.linked, course.runs)


def _row_scope(
    connection: Connection,
    course: CourseInputs,
    options: WriteOptions,
    applied_from: AppliedFrom | None,
    digests: pl.DataFrame | None,
) -> _RowScope:
    """Under the course's lock: the learners to plan. Only those whose rows changed (added,
    changed or removed memberships, links included) when the last write's digests are stored
    and the platform side is still the one that write left; otherwise (first sync, platform
    changed, fingerprint version bumped, a recomputation) every learner. `digests`: the
    course's now (`_membership_digests`), None when not kept."""
    if digests is None:
        return _RowScope()
    found = sync_store.stored_row_digests(connection, course.course_uuid)
    if found is None:
        return _RowScope(digests)
    platform_left, stored_bytes = found
    stored = row_digests.decode(stored_bytes)
    if not options.changed_rows_only or applied_from is None:
        return _RowScope(digests, stored)
    summary = change_tracking.achievement_summaries(connection, [course.activity_id])
    platform_now = change_tracking.platform_fingerprint(
        course.activity_id, summary.get(course.activity_id), applied_from.linking_generation
    )
    if platform_now != platform_left:
        return _RowScope(digests, stored)
    return _RowScope(digests, stored, row_digests.affected_users(digests, stored))


def _same_digests(new: pl.DataFrame | None, stored: pl.DataFrame | None) -> bool:
    if new is None or stored is None:
        return new is None and stored is None
    return new.equals(stored)


def _plan_write(
    connection: Connection, course: CourseInputs, now: datetime, users: list[str] | None
) -> tuple[sync_store.CourseSyncBatch, CourseWrite]:
    """The course's batch and what it did, planned for `users` only (None: every learner)."""
    latest = (
        course.latest if users is None else course.latest.filter(pl.col("user_id").is_in(users))
    )
    batch, _ = plan_course(
        connection, course.course_uuid, course.activity_id, latest, course.linked, now
    )
    return batch, CourseWrite(
        course_uuid=course.course_uuid,
        activity_id=course.activity_id,
        enrolments=course.enrolments.height,
        learners=course.latest.height,
        learners_planned=latest.height,
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


def progress_tally(facts_of_courses: Iterable[Mapping[str, Any]], skipped: int) -> Counter[str]:
    """What the progress step did, added up over the courses it synced (refused included)."""
    tally: Counter[str] = Counter(skipped=skipped)
    for facts in facts_of_courses:
        if fact_names.ACHIEVEMENTS_CREATED not in facts:
            continue  # not synced: failed, or skipped as unchanged
        created = facts[fact_names.ACHIEVEMENTS_CREATED]
        updated = facts[fact_names.ACHIEVEMENTS_UPDATED]
        tally.update(
            courses=1,
            changed=int(created + updated > 0),
            created=created,
            updated=updated,
            completed=facts[fact_names.ACHIEVEMENTS_COMPLETED],
        )
    return tally


def progress_summary(tally: Counter[str], failed: int, dry_run: bool) -> str:
    """The step's one log line: how many courses were synced, and what changed in them.

    A night on which nothing changed says so, instead of a row of zeros.
    """
    synced = counted(tally["courses"], "course") + (" checked" if dry_run else " synced")
    if not tally["changed"]:
        line = f"{synced}, nothing {'would change' if dry_run else 'changed'}"
    else:
        verb = "would change" if dry_run else "changed"
        line = (
            f"{synced}: achievements {verb} in {counted(tally['changed'], 'course')} "
            f"({tally['created']} created, {tally['updated']} updated, "
            f"{tally['completed']} completed)"
        )
    if tally["skipped"]:
        line += f"; {counted(tally['skipped'], 'course')} skipped as unchanged"
    return line + (f"; {counted(failed, 'course')} failed" if failed else "")
