"""What a course was last synced from, so that a night on which nothing it depends on changed
skips it (issue 21: the nightly sync costs what changed, not what exists).

A course's result is a function of its reports (and its runs' start times, R6), and of the
platform side: its activity, that activity's achievements, and what linking reads (users, their
emails and `forgotten`, the links in `future_learn_memberships`). At the end of a successful
course sync both halves are stored as fingerprints in `course_sync_state`; the next night a
course whose reports digest the same and whose platform fingerprint is the same is not parsed,
planned or written. Both fingerprints are pure functions of their inputs (`report_fingerprint`,
`platform_fingerprint`); the database parts are here.

Linking's inputs are global (a new user can link to a membership of any course, and which course
a membership is in is only known from the reports), so they are summed up in one counter, the
linking *generation* in `linking_state`: it moves on whenever the platform changed what linking
reads outside the sync. A course's platform fingerprint includes the generation its linking ran
under, so a moved generation recomputes every course once. What moves it, checked before any
linking and each time the caseless email keys are refreshed (`refresh_linking_state`, the only
place they are):

- a new user, or a changed email, that could link to a membership fetched and still unlinked
  (by id or caseless email, the new email or the old one); other new users change nothing;
  likewise a user deleted from the platform (their key row is removed with their email);
- the set of forgotten users (a link to a forgotten user is no longer used);
- the links: a sum of one hash per (membership, user) link, which the sync keeps up to date
  with the links it writes itself (`account_links`, in the course's transaction), so that any
  difference is a link made, moved or removed by the platform.

Achievements are summed up per activity (count, largest id and updated_at, total progress,
count per state): a platform change to an achievement changes its `updated_at` (SPEC §3) or, if
it does not, almost surely one of the sums.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets.platform import sync_store, transactions
from sync_assets.platform.tables import (
    ACHIEVEMENT_STATES,
    achievements,
    future_learn_memberships,
    linking_state,
    user_email_keys,
    users,
)
from sync_assets.rules.linking import email_keys

# Part of every fingerprint: a release that changes what a course's sync computes bumps it, and
# every course is recomputed once.
FINGERPRINT_VERSION = 1
_STATE_ROW = 1
_MASK = (1 << 64) - 1


# --- pure: the two fingerprints ------------------------------------------------------------------


def report_fingerprint(
    runs: Iterable[tuple[str, datetime | None]], digests: Mapping[str, str]
) -> str:
    """A course's reports as served: each run (uuid, start time) with its report's digest."""
    parts = sorted((run, start.isoformat() if start else None, digests[run]) for run, start in runs)
    return _digest({"version": FINGERPRINT_VERSION, "runs": parts})


def platform_fingerprint(
    activity_id: str, achievements_summary: tuple | None, generation: int
) -> str:
    """The platform side of a course: its activity, its achievements' summary, the generation."""
    return _digest(
        {
            "version": FINGERPRINT_VERSION,
            "activity": activity_id,
            "achievements": list(achievements_summary or ()),
            "linking_generation": generation,
        }
    )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()


# --- achievements ------------------------------------------------------------------------------


def achievement_summaries(connection: Connection, activity_ids: Iterable[str]) -> dict[str, tuple]:
    """Each activity's achievements summed up (see the module's doc); absent: none."""
    summaries: dict[str, tuple] = {}
    for chunk in sync_store.chunks(sorted(set(activity_ids))):
        rows = connection.execute(_summaries_statement(), {"activity_ids": list(chunk)})
        for activity, *figures in rows:
            summaries[activity] = tuple(_plain(value) for value in figures)
    return summaries


@functools.cache
def _summaries_statement() -> sa.Select:
    """Built once: a course's write reads its summary twice (before planning, to see whether
    only its changed learners need planning, and after), and SQLAlchemy works out a statement's
    cache key each time a new one is built: most of this read's time in a profile of the
    next day's progress step on `demo` (benchmarks/changed_rows.py)."""
    per_state = [
        sa.func.sum(sa.case((achievements.c.state == state, 1), else_=0))
        for state in ACHIEVEMENT_STATES
    ]
    return (
        sa.select(
            achievements.c.activity_id,
            sa.func.count(),
            sa.func.max(achievements.c.id),
            sa.func.max(achievements.c.updated_at),
            sa.func.sum(achievements.c.progress),
            *per_state,
        )
        .where(achievements.c.activity_id.in_(sa.bindparam("activity_ids", expanding=True)))
        .group_by(achievements.c.activity_id)
    )


def _plain(value: object) -> object:
    """A figure as the same JSON on every driver (SQLite returns sums and times as it stores)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if value is None or isinstance(value, int | str):
        return value
    return int(value) if float(value).is_integer() else str(value)


# --- linking: the generation -------------------------------------------------------------------


@dataclass(frozen=True)
class _LinkingInputs:
    forgotten_digest: str
    links_digest: str
    stale_keys: pl.DataFrame  # sync_store.stale_email_keys
    erased_keys: pl.DataFrame  # sync_store.erased_email_keys: deleted or forgotten users' rows
    could_link: bool

    def keys_to_refresh(self) -> bool:
        return not (self.stale_keys.is_empty() and self.erased_keys.is_empty())


def links_hash(links: pl.DataFrame) -> int:
    """The sum (mod 2^64) of one hash per (membership_uuid, user_id) row: order-free, and a link
    written by the sync is added to the stored sum without reading the table again."""
    if links.is_empty():
        return 0
    hashes = links.select(
        pl.concat_str("membership_uuid", "user_id", separator="\x1f").hash(seed=21)
    ).to_series()
    return int(hashes.to_numpy().sum(dtype=np.uint64)) & _MASK


def _read_inputs(connection: Connection) -> _LinkingInputs:
    forgotten = connection.execute(
        sa.select(users.c.id).where(users.c.forgotten.is_(True)).order_by(users.c.id)
    ).scalars()
    stale = sync_store.stale_email_keys(connection)
    erased = sync_store.erased_email_keys(connection)
    return _LinkingInputs(
        forgotten_digest=hashlib.sha256("\n".join(forgotten).encode()).hexdigest(),
        links_digest=str(_stored_links_hash(connection)),
        stale_keys=stale,
        erased_keys=erased,
        could_link=_could_link(connection, stale, erased),
    )


def _stored_links_hash(connection: Connection) -> int:
    """`links_hash` of every stored link, read a chunk at a time (a sum: chunks add up): read
    every night, ~1M links on `large`, which as one frame through SQLAlchemy's rows cost half
    the time and the whole table's memory at once (benchmarks/links_digest.py)."""
    table = future_learn_memberships
    statement = sa.select(table.c.membership_uuid, table.c.user_id).where(
        table.c.user_id.is_not(None)
    )
    schema = {"membership_uuid": pl.String, "user_id": pl.String}
    frames = sync_store.driver_frames(connection, statement, schema)
    return sum(links_hash(frame) for frame in frames) & _MASK


def _could_link(connection: Connection, stale: pl.DataFrame, erased: pl.DataFrame) -> bool:
    """Whether a new, changed or deleted user matches a membership fetched and still unlinked
    (R3), by id or by caseless email, new or old: only then can linking's result change because
    of it (a deleted user may have made an email ambiguous that now links someone)."""
    if stale.is_empty() and erased.is_empty():
        return False
    unlinked = sync_store.read_frame(
        connection,
        sa.select(future_learn_memberships.c.external_learner_id).where(
            future_learn_memberships.c.user_id.is_(None),
            future_learn_memberships.c.external_learner_id.is_not(None),
        ),
        {"external_learner_id": pl.String},
    )["external_learner_id"]
    if unlinked.is_empty():
        return False
    # In chunks: on a platform whose keys were never computed every user is stale, and one IN
    # of a million ids is past SQLite's bound-variable limit (found on `large`, 920k users).
    previous = pl.concat(
        [
            sync_store.read_frame(
                connection,
                sa.select(user_email_keys.c.email_key).where(
                    user_email_keys.c.user_id.in_(sync_store.listed(connection, chunk))
                ),
                {"email_key": pl.String},
            )["email_key"]
            for chunk in sync_store.chunks(stale["user_id"].to_list())
        ]
        or [pl.Series("email_key", [], pl.String)]
    )
    ids = pl.concat([stale["user_id"], erased["user_id"]])
    keys = pl.concat([stale["email_key"], previous, erased["email_key"]]).drop_nulls()
    by_id = unlinked.is_in(ids.implode()).any()
    return bool(by_id or email_keys(unlinked).is_in(keys.implode()).any())


def refresh_linking_state(engine: Engine) -> int:
    """The linking generation, moved on first if the platform changed what linking reads; the
    caseless email keys brought up to date with `users` in the same transaction: new and changed
    emails written, the rows of users deleted or forgotten on the platform removed (erasure: no
    copy of their email outlives them here).

    Every refresh of the keys goes through here, so no change can be absorbed by a refresh
    without moving the generation. Writes nothing when nothing changed (R13). Called on every
    sync before any course is skipped as unchanged, so a night that skips every course still
    removes the emails of users erased since.
    """
    with engine.connect() as connection:
        stored = connection.execute(sa.select(linking_state)).mappings().first()
        seen = _read_inputs(connection)
    if stored is not None and not _changed(stored, seen) and not seen.keys_to_refresh():
        return int(stored["generation"])
    del seen  # read again under the lock; on a first sync it holds every user's email key
    with transactions.write_transaction(engine) as connection:
        # FOR UPDATE: a course's transaction adds its links to the stored digest under this row's
        # lock (`account_links`), so no course commits between reading the digest and summing
        # the links. Without it (PostgreSQL, read committed), a course committed in between read
        # as a platform change: every course synced before moved the generation on, and the
        # next night recomputed them all (found with overlapping runs, which write while the
        # next run refreshes). SQLite's write lock serialises the two already.
        stored = connection.execute(sa.select(linking_state).with_for_update()).mappings().first()
        seen = _read_inputs(connection)  # again, under the write lock
        generation = 1 if stored is None else int(stored["generation"])
        if stored is None or _changed(stored, seen):
            generation += stored is not None
            statement = sync_store.dialect_insert(connection, linking_state)
            values = {
                "id": _STATE_ROW,
                "generation": generation,
                "forgotten_digest": seen.forgotten_digest,
                "links_digest": seen.links_digest,
            }
            connection.execute(
                statement.values(values).on_conflict_do_update(
                    index_elements=["id"],
                    set_={name: statement.excluded[name] for name in values if name != "id"},
                )
            )
        sync_store.write_email_keys(connection, seen.stale_keys)
        sync_store.delete_email_keys(connection, seen.erased_keys["user_id"].to_list())
    return generation


def checked_generation(engine: Engine) -> int | None:
    """The generation the last `refresh_linking_state` left, without checking the platform
    again; None if it never ran.

    For a night's sync run, whose check refreshed the state minutes before: a platform change
    since is not seen tonight but by the next night's check, which moves the generation on and
    so recomputes the courses stamped with this one (as for any change after the night).
    Reading it again would read every stored link and every user's email key once per run
    (~1M links on `large`: seconds a run, each on the runs' serial path, linking)."""
    with engine.connect() as connection:
        generation = connection.execute(sa.select(linking_state.c.generation)).scalar()
    return None if generation is None else int(generation)


def _changed(stored: Mapping, seen: _LinkingInputs) -> bool:
    return (
        stored["forgotten_digest"] != seen.forgotten_digest
        or stored["links_digest"] != seen.links_digest
        or seen.could_link
    )


def links_to_write(connection: Connection, memberships: pl.DataFrame) -> pl.DataFrame:
    """The links a batch's memberships will make: those of memberships linked to no one yet (a
    stored link is never re-pointed, and a membership in two courses is linked by the first)."""
    if memberships.is_empty() or "user_id" not in memberships.columns:
        return pl.DataFrame(schema={"membership_uuid": pl.String, "user_id": pl.String})
    links = memberships.filter(pl.col("user_id").is_not_null()).select("membership_uuid", "user_id")
    table = future_learn_memberships
    linked: set[str] = set()
    for chunk in sync_store.chunks(links["membership_uuid"].to_list()):
        linked.update(
            connection.execute(
                sa.select(table.c.membership_uuid).where(
                    table.c.membership_uuid.in_(sync_store.listed(connection, chunk)),
                    table.c.user_id.is_not(None),
                )
            ).scalars()
        )
    return links.filter(~pl.col("membership_uuid").is_in(list(linked)))


def account_links(connection: Connection, links: pl.DataFrame) -> None:
    """Add the links the sync just made (`links_to_write`) to the stored links digest, in the
    same transaction, so that they do not read as a platform change."""
    if links.is_empty():
        return
    stored = connection.execute(
        sa.select(linking_state.c.links_digest).with_for_update()
    ).scalar_one_or_none()
    if stored is None:  # never checked yet: the first check records the table as it is
        return
    connection.execute(
        sa.update(linking_state).values(links_digest=str((int(stored) + links_hash(links)) & _MASK))
    )
