"""Certificate work on the platform database, exactly once by construction.

A batch of completion events is handled in one transaction: the events still pending are locked
(PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: `BEGIN IMMEDIATE` takes the database's write lock),
their effects are computed from the state inside that transaction, written, and the events are
marked handled with their outcome before the commit. A crash anywhere rolls all of it back; an
overlapping run skips what another holds or has handled. C2 numbering holds the programme's row
lock while it numbers, so certificate numbers are consecutive and never reused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets import failpoints
from sync_assets.platform import sync_store
from sync_assets.platform.database import dialect_insert
from sync_assets.platform.tables import (
    achievements,
    activities,
    completion_events,
    notifications,
    programmes,
    user_programme_enrolments,
)
from sync_assets.platform.transactions import write_transaction
from sync_assets.rules import certificates as rules

log = logging.getLogger(__name__)
PENDING_DAYS = 7
EVENT_SCHEMA = {"id": pl.Int64, "user_id": pl.String, "programme_id": pl.String}


def _unhandled() -> sa.ColumnElement[bool]:
    """A completion event still pending: the one definition of what is left to do (C1, C3)."""
    return completion_events.c.handled_at.is_(None)


def _due(due_before: datetime) -> sa.ColumnElement[bool]:
    """An enrolment C2 looks at: pending since `due_before` or earlier (flagged or not: C4
    decides, per enrolment, in `_number_programme`)."""
    table = user_programme_enrolments
    return sa.and_(table.c.state == "pending", table.c.pending_since <= due_before)


def _due_before(now: datetime) -> datetime:
    return now - timedelta(days=PENDING_DAYS)


def pending_event_ids(connection: Connection, *, limit: int | None = None) -> list[int]:
    """Completion events not yet handled, oldest first: what is left to do, whoever left it."""
    table = completion_events
    statement = sa.select(table.c.id).where(_unhandled()).order_by(table.c.id)
    if limit:
        statement = statement.limit(limit)
    return list(connection.execute(statement).scalars())


def has_certificate_work(connection: Connection, *, now: datetime | None = None) -> bool:
    """Whether `daily_certificates_job` would do anything now: a completion event is pending,
    or C2 would complete an enrolment. Read-only; the same predicates as the job's.

    Two cheap reads: the pending events' partial index (`ix_completion_events_pending`), then the
    (state, flagged) pairs among due enrolments, at most two, each put to C4 as C2 puts them: a
    flagged enrolment that is due stays pending every night and is no work.
    """
    if connection.execute(sa.select(sa.exists().where(_unhandled()))).scalar():
        return True
    table = user_programme_enrolments
    due = connection.execute(
        sa.select(table.c.state, table.c.flagged)
        .where(_due(_due_before(now or datetime.now(UTC))))
        .distinct()
    ).all()
    return any(
        rules.enrolment_refusal(state, "complete", flagged) is None for state, flagged in due
    )


def latest_event_id(connection: Connection) -> int | None:
    """The newest completion event's id (the primary key's maximum: cheap), None if none yet."""
    return connection.execute(sa.select(sa.func.max(completion_events.c.id))).scalar()


def _lock_pending(connection: Connection, event_ids: Sequence[int]) -> pl.DataFrame:
    table = completion_events
    statement = sa.select(table.c.id, table.c.user_id, table.c.programme_id).where(
        table.c.id.in_(list(event_ids)), _unhandled()
    )
    if connection.dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    return pl.DataFrame(connection.execute(statement).all(), schema=EVENT_SCHEMA, orient="row")


def _complete_achievements(connection: Connection, user_ids: list[str]) -> pl.DataFrame:
    schema = {
        "user_id": pl.String,
        "activity_id": pl.String,
        "programme_id": pl.String,
        "category": pl.String,
        "credit": pl.Float64,
    }

    def build(chunk: Sequence[str]) -> sa.Select:
        return (
            sa.select(
                achievements.c.user_id,
                achievements.c.activity_id,
                achievements.c.programme_id,
                activities.c.category,
                activities.c.credit,
            )
            .join(activities, activities.c.id == achievements.c.activity_id)
            .where(achievements.c.user_id.in_(chunk), achievements.c.state == "complete")
        )

    frames = [
        pl.DataFrame(connection.execute(build(chunk)).all(), schema=schema, orient="row")
        for chunk in sync_store.chunks(sorted(set(user_ids)))
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _programmes(connection: Connection) -> pl.DataFrame:
    rows = connection.execute(sa.select(programmes.c.id, programmes.c.slug)).all()
    return pl.DataFrame(rows, schema={"id": pl.String, "slug": pl.String}, orient="row")


def _notifications(connection: Connection, user_ids: list[str]) -> pl.DataFrame:
    schema = {"user_id": pl.String, "kind": pl.String}
    rows = []
    for chunk in sync_store.chunks(sorted(set(user_ids))):
        statement = sa.select(notifications.c.user_id, notifications.c.kind).where(
            notifications.c.user_id.in_(chunk)
        )
        rows += connection.execute(statement).all()
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass
class CertificateBatch:
    """What handling a batch of completion events did."""

    handled: int = 0
    skipped: int = 0  # already handled, or held by an overlapping run
    moved_to_pending: int = 0
    notifications_written: int = 0
    refused: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    details: dict[str, int] = field(default_factory=dict)

    def add(self, other: CertificateBatch) -> None:
        self.handled += other.handled
        self.skipped += other.skipped
        self.moved_to_pending += other.moved_to_pending
        self.notifications_written += other.notifications_written
        self.refused += other.refused
        for counts, more in ((self.outcomes, other.outcomes), (self.details, other.details)):
            for key, count in more.items():
                counts[key] = counts.get(key, 0) + count


def handle_completion_events(
    engine: Engine, event_ids: Sequence[int], *, now: datetime | None = None
) -> CertificateBatch:
    """C1 and C3 for the given events, each applied at most once (see the module docstring).

    A first sync of a large platform completes a hundred thousand enrolments at once: they are
    handled `KEY_CHUNK` events per transaction, so no statement outgrows SQLite's limit on bound
    variables and no transaction holds the write lock for the whole batch.
    """
    now = now or datetime.now(UTC)
    batch = CertificateBatch()
    for chunk in sync_store.chunks(sorted(set(event_ids))):
        batch.add(_handle_chunk(engine, chunk, now))
    return batch


def _handle_chunk(engine: Engine, event_ids: Sequence[int], now: datetime) -> CertificateBatch:
    batch = CertificateBatch()
    with write_transaction(engine) as connection:
        events = _lock_pending(connection, event_ids)
        batch.skipped = len(event_ids) - events.height
        if events.is_empty():
            return batch
        users = events["user_id"].to_list()
        outcomes = rules.certificate_outcomes(
            events,
            _programmes(connection),
            sync_store.programme_structure(connection),
            _complete_achievements(connection, users),
            sync_store.programme_enrolments(connection, users),
            _notifications(connection, users),
        )
        batch.moved_to_pending = _move_to_pending(
            connection, outcomes.filter(pl.col("outcome") == rules.MOVED_TO_PENDING), now, batch
        )
        batch.notifications_written = _notify(
            connection, outcomes.filter(pl.col("outcome") == rules.NOTIFIED), now
        )
        _mark_handled(connection, outcomes, now)
        failpoints.reached("certificates.before_commit")
    batch.handled = outcomes.height
    batch.outcomes = dict(outcomes.group_by("outcome").len().sort("outcome").iter_rows())
    batch.details = dict(
        outcomes.filter(pl.col("detail").is_not_null())
        .group_by("detail")
        .len()
        .sort("detail")
        .iter_rows()
    )
    return batch


def _move_to_pending(
    connection: Connection, moves: pl.DataFrame, now: datetime, batch: CertificateBatch
) -> int:
    if moves.is_empty():
        return 0
    table = user_programme_enrolments
    ids = moves["enrolment_id"].to_list()
    current = connection.execute(
        sa.select(table.c.id, table.c.state, table.c.flagged).where(table.c.id.in_(ids))
    ).all()
    allowed = []
    for enrolment_id, state, flagged in current:
        refusal = rules.enrolment_refusal(state, "pending", flagged)
        if refusal:  # a logged no-op, not a crash
            log.warning("enrolment %s not moved to pending: %s", enrolment_id, refusal)
            batch.refused.append(f"enrolment {enrolment_id}: {refusal}")
        else:
            allowed.append(enrolment_id)
    if not allowed:
        return 0
    result = connection.execute(
        sa.update(table)
        .where(table.c.id.in_(allowed), table.c.state == "enrolled")
        .values(state="pending", pending_since=now)
    )
    return result.rowcount


def _notify(connection: Connection, notified: pl.DataFrame, now: datetime) -> int:
    if notified.is_empty():
        return 0
    rows = [
        {"user_id": user, "kind": rules.CSA_NOTIFICATION, "created_at": now}
        for user in notified["user_id"].unique().sort()
    ]
    statement = (
        dialect_insert(connection, notifications)
        .on_conflict_do_nothing(index_elements=["user_id", "kind"])
        .returning(notifications.c.id)
    )
    return len(connection.execute(statement, rows).all())


def _mark_handled(connection: Connection, outcomes: pl.DataFrame, now: datetime) -> None:
    table = completion_events
    # One statement per outcome code, however many events.
    for outcome, ids in outcomes.group_by("outcome").agg("id").iter_rows():
        connection.execute(
            sa.update(table)
            .where(table.c.id.in_(ids), _unhandled())
            .values(handled_at=now, outcome=outcome)
        )


# --- C2 ----------------------------------------------------------------------------------------


@dataclass
class Certified:
    completed: dict[str, list[int]] = field(default_factory=dict)  # programme → numbers given
    refused: list[str] = field(default_factory=list)


def complete_due_certificates(engine: Engine, *, now: datetime | None = None) -> Certified:
    """C2: enrolments pending for seven days and not flagged become complete, numbered in turn.

    Per programme, in one transaction that holds the programme's row lock (PostgreSQL) or the
    database's write lock (SQLite): the next number is one more than the programme's highest,
    and only enrolments that really complete get one, so numbers are never skipped or reused.
    """
    due_before = _due_before(now or datetime.now(UTC))
    certified = Certified()
    table = user_programme_enrolments
    with engine.connect() as connection:
        # Only programmes with something due: on SQLite a write transaction locks the database.
        programme_ids = list(
            connection.execute(
                sa.select(table.c.programme_id)
                .where(_due(due_before))
                .distinct()
                .order_by(table.c.programme_id)
            ).scalars()
        )
    for programme_id in programme_ids:
        with write_transaction(engine) as connection:
            numbers = _number_programme(connection, programme_id, due_before, certified)
            if numbers:
                failpoints.reached("certificates.c2_before_commit")
        if numbers:
            certified.completed[programme_id] = numbers
    return certified


def _number_programme(
    connection: Connection, programme_id: str, due_before: datetime, certified: Certified
) -> list[int]:
    table = user_programme_enrolments
    lock = sa.select(programmes.c.id).where(programmes.c.id == programme_id)
    if connection.dialect.name == "postgresql":
        lock = lock.with_for_update()
    connection.execute(lock)
    due = connection.execute(
        sa.select(table.c.id, table.c.state, table.c.flagged)
        .where(table.c.programme_id == programme_id, _due(due_before))
        .order_by(table.c.pending_since, table.c.id)
    ).all()
    highest = connection.execute(
        sa.select(sa.func.coalesce(sa.func.max(table.c.certificate_number), 0)).where(
            table.c.programme_id == programme_id
        )
    ).scalar_one()
    numbers: list[int] = []
    for enrolment_id, state, flagged in due:
        refusal = rules.enrolment_refusal(state, "complete", flagged)
        if refusal:
            log.info("enrolment %s stays %s: %s", enrolment_id, state, refusal)
            certified.refused.append(f"enrolment {enrolment_id}: {refusal}")
            continue
        number = highest + len(numbers) + 1
        connection.execute(
            sa.update(table)
            .where(table.c.id == enrolment_id)
            .values(state="complete", certificate_number=number)
        )
        numbers.append(number)
    return numbers
