"""Set-based data access for the sync: every read and write takes or returns a polars frame.

Writes are batched, so the number of statements depends on the number of tables touched, not on
the number of learners: on SQLite a statement with RETURNING is sent as multi-row `INSERT …`
of up to `database.INSERT_PAGE_SIZE` rows, one without as one executemany of rows polars makes
(`_execute_many`); on PostgreSQL a frame is sent with one `COPY` into a temporary table and
written with one `INSERT … SELECT … ON CONFLICT` (`_bulk_insert`). Reads by key go in chunks of
`KEY_CHUNK` keys, each bound as one JSON text (`listed`). Functions take a Connection so that
callers choose the transaction; `apply_course_sync` is the one that commits a course's changes
all together.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql.dml import Insert

from sync_assets.platform.database import dialect_insert
from sync_assets.platform.tables import (
    achievement_transitions,
    achievements,
    activities,
    completion_events,
    course_sync_state,
    future_learn_memberships,
    programme_activities,
    programme_activity_groupings,
    programmes,
    user_email_keys,
    user_programme_enrolments,
    users,
)
from sync_assets.rules.achievements import INITIAL_STATE
from sync_assets.rules.linking import email_key, email_keys
from sync_assets.series import sorted_and_distinct

KEY_CHUNK = 5_000
BULK_ROWS = 50_000  # rows of a bulk write turned into Python values at once (SQLite)
UTC_TIME = pl.Datetime("us", "UTC")

KNOWN_COURSES_SCHEMA = {"course_uuid": pl.String, "activity_id": pl.String, "title": pl.String}
USERS_SCHEMA = {"id": pl.String, "email": pl.String, "forgotten": pl.Boolean}
MEMBERSHIP_COLUMNS = {
    "membership_uuid": pl.String,
    "user_id": pl.String,
    "external_learner_id": pl.String,
    "learner_uuid": pl.String,
    "fetched_at": UTC_TIME,
    "linked_at": UTC_TIME,
    "gone_at": UTC_TIME,
}
ACHIEVEMENT_SCHEMA = {
    "id": pl.Int64,
    "user_id": pl.String,
    "activity_id": pl.String,
    "programme_id": pl.String,
    "progress": pl.Int64,
    "state": pl.String,
    "completed_at": UTC_TIME,
    "created_at": UTC_TIME,
    "updated_at": UTC_TIME,
}
ENROLMENT_SCHEMA = {
    "id": pl.Int64,
    "user_id": pl.String,
    "programme_id": pl.String,
    "state": pl.String,
    "flagged": pl.Boolean,
    "auto_enrolled": pl.Boolean,
    "certificate_number": pl.Int64,
    "pending_since": UTC_TIME,
    "created_at": UTC_TIME,
}
ACTIVITY_PROGRAMMES_SCHEMA = {
    "activity_id": pl.String,
    "programme_id": pl.String,
    "programme_slug": pl.String,
}
PROGRAMME_STRUCTURE_SCHEMA = {
    "programme_id": pl.String,
    "programme_slug": pl.String,
    "grouping_id": pl.Int64,
    "grouping_title": pl.String,
    "required_for_completion": pl.Int64,
    "sort_key": pl.Int64,
    "activity_id": pl.String,
    "credit": pl.Float64,
    "category": pl.String,
}

# What a caller hands to apply_achievement_changes: one row per achievement to create or change.
# `previous_state` and `previous_progress` are what the change was planned from (null for an
# achievement that does not exist yet, which starts `enrolled`): a row whose stored state or
# progress is no longer that is not written. `cause` says why (R10).
ACHIEVEMENT_CHANGE_SCHEMA = {
    "user_id": pl.String,
    "activity_id": pl.String,
    "programme_id": pl.String,
    "progress": pl.Int64,
    "state": pl.String,
    "completed_at": UTC_TIME,
    "previous_state": pl.String,
    "previous_progress": pl.Int64,
    "cause": pl.String,  # JSON object
}
_WRITTEN_SCHEMA = {"achievement_id": pl.Int64, "user_id": pl.String, "activity_id": pl.String}

# The plan of a course's updates, staged so that one UPDATE … FROM applies every row whose stored
# state and progress are still those it was planned from. Temporary: private to the connection.
achievement_plan = sa.Table(
    "sync_assets_achievement_plan",
    sa.MetaData(),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("activity_id", sa.Text, nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("previous_state", sa.Text, nullable=False),
    sa.Column("previous_progress", sa.Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


def chunks(values: Sequence[Any], size: int = KEY_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# Keys as the sync holds them: a polars Series for a run's (a million memberships on `large`),
# any iterable of texts for a few.
Keys = Iterable[str] | pl.Series


def _distinct(values: Keys) -> pl.Series:
    """The keys once each, sorted (by code point, as Python sorts texts), as a polars Series.

    Not a Python set and list: a million Python strings alive at once cost several times their
    Series, and CPython keeps the memory for the rest of the step (linking on `large`).
    """
    keys = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.String)
    return keys if sorted_and_distinct(keys) else keys.unique().sort()


def key_chunks(values: Keys, size: int = KEY_CHUNK) -> Iterator[list[str]]:
    """The distinct keys, sorted, `size` at a time as Python texts (only a chunk's at once)."""
    keys = _distinct(values)
    for start in range(0, len(keys), size):
        yield keys.slice(start, size).to_list()


# Rows a COPY sends at once: its CSV text is held in memory while it is sent.
COPY_ROWS = 100_000

# Keys written at once past which PostgreSQL's statistics of the table are refreshed (a first
# sync, a bulk import of users): ANALYZE samples a fixed number of rows, well under a second.
ANALYZE_AFTER_ROWS = 10_000

# Rows read at a time into a frame: a read of every user or every link (~1M on `large`) held as
# Python tuples cost several times the frame it becomes (benchmarks/linking_state_memory.py).
READ_ROWS = 50_000


# Column types a frame takes as the driver gives them (SQLite's 0 and 1 become booleans): a
# read of only these needs none of SQLAlchemy's result processing. Datetimes do (SQLite: text).
_DRIVER_TYPES = frozenset({pl.String, pl.Int64, pl.Int32, pl.Boolean, pl.Float64})


def read_frame(connection: Connection, statement: sa.Executable, schema: dict) -> pl.DataFrame:
    """The statement's rows as a frame of `schema`, READ_ROWS Python rows alive at a time (on
    PostgreSQL a server-side cursor: the driver does not buffer the whole result either).

    Straight from the driver's cursor (`driver_frames`) when every column is a text, integer
    or boolean and every parameter a text or integer: SQLAlchemy's rows were three quarters of
    linking's read of a next day's memberships in a profile (teachcomputing: 55k rows)."""
    if isinstance(statement, sa.Select) and set(schema.values()) <= _DRIVER_TYPES:
        driver = _driver_statement(connection, statement)
        if driver is not None:
            frames = list(_driver_frames(connection, *driver, schema))
            return pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=schema)
    result = connection.execute(statement, execution_options={"yield_per": READ_ROWS})
    frames = [pl.DataFrame(part, schema=schema, orient="row") for part in result.partitions()]
    return pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=schema)


def _driver_statement(
    connection: Connection, statement: sa.Select
) -> tuple[str, tuple[Any, ...] | dict[str, Any]] | None:
    """The statement as the driver takes it (SQL text and parameters in its style), or None when
    a parameter needs SQLAlchemy's processing on the way in (anything but a text or integer)."""
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = compiled.construct_params()
    if not all(
        value is None or (isinstance(value, str | int) and not isinstance(value, bool))
        for value in params.values()
    ):
        return None
    if connection.dialect.positional:
        return str(compiled), tuple(params[name] for name in compiled.positiontup or ())
    return str(compiled), params


def driver_frames(
    connection: Connection, statement: sa.Select, schema: dict
) -> Iterator[pl.DataFrame]:
    """The rows of `statement` as frames of `schema`, READ_ROWS rows each, fetched straight from
    the driver's cursor (on PostgreSQL a named, server-side one), on the connection's own
    transaction. For a statement whose columns are texts, integers and booleans and whose
    parameters are texts and integers: the values are the driver's, without SQLAlchemy's
    result processing.

    SQLAlchemy's Row per row cost half the time of reading `large`'s ~1M links every night
    (`change_tracking`); a fetchmany of plain tuples leaves polars the rest.
    """
    driver = _driver_statement(connection, statement)
    if driver is None:
        raise ValueError("driver_frames reads a statement whose parameters are texts or integers")
    return _driver_frames(connection, *driver, schema)


def _driver_frames(
    connection: Connection, sql: str, params: tuple[Any, ...] | dict[str, Any], schema: dict
) -> Iterator[pl.DataFrame]:
    dbapi = connection.connection.dbapi_connection
    postgres = connection.dialect.name == "postgresql"
    cursor = dbapi.cursor(f"sync_assets_read_{uuid.uuid4().hex}") if postgres else dbapi.cursor()
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(READ_ROWS):
            yield pl.DataFrame(rows, schema=schema, orient="row")
    finally:
        cursor.close()


def listed(connection: Connection, values: Sequence[str]) -> sa.Select:
    """Texts as a one-column SELECT (for `column.in_(…)`), bound as one JSON parameter.

    An IN of a chunk of keys bound one parameter each cost SQLAlchemy more than the read itself
    (a bind name, a coercion and a literal-expansion per key: ~0.4 of a 50,000-key read's time
    in a profile of `users_matching`); one JSON text costs the same for any number of keys.
    """
    bound = sa.bindparam(None, json.dumps(list(values)), type_=sa.Text, unique=True)
    if connection.dialect.name == "postgresql":
        elements = sa.func.json_array_elements_text(sa.cast(bound, sa.JSON))
    else:
        elements = sa.func.json_each(bound)
    return sa.select(sa.column("value", sa.Text)).select_from(elements)


def _read_by_keys(
    connection: Connection,
    build: Any,
    keys: Keys,
    schema: dict,
) -> pl.DataFrame:
    """Run `build(chunk_of_keys)` for each chunk of distinct keys and stack the results."""
    frames = [read_frame(connection, build(chunk), schema) for chunk in key_chunks(keys)]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dicts()


def _copies(connection: Connection) -> bool:
    """Whether bulk writes go through COPY: on PostgreSQL, where a first sync's batch writes in
    0.30 of the VALUES path's time (benchmarks/copy_vs_insert.py); SQLite has no COPY."""
    return connection.dialect.name == "postgresql"


def _copy_frame(connection: Connection, table: sa.Table, frame: pl.DataFrame) -> None:
    """COPY every row of `frame` into `table` (PostgreSQL), on the connection's own transaction.

    CSV, because polars writes it in one pass and PostgreSQL's CSV parser has no backslash
    escapes: every text is quoted (an empty text is `""`), a null is an empty unquoted field, so
    commas, quotes, newlines and backslashes come through as they are. Timestamps carry their UTC
    offset; JSON columns hold the JSON text.
    """
    quote = connection.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in frame.columns)
    sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN WITH (FORMAT csv)"
    # The DBAPI connection under this SQLAlchemy connection: same session, same transaction,
    # so the course's lock and all-or-nothing commit are exactly those of the INSERT path.
    with connection.connection.dbapi_connection.cursor() as cursor:
        # A slice's text at a time, as SQLite's executemany takes a slice: `large`'s million
        # fetched memberships as one CSV text were ~160 MB at once (benchmarks/copy_memory.py).
        for start in range(0, frame.height, COPY_ROWS):
            buffer = io.BytesIO()
            frame.slice(start, COPY_ROWS).write_csv(
                buffer,
                include_header=False,
                quote_style="non_numeric",
                null_value="",
                datetime_format="%Y-%m-%d %H:%M:%S%.6f%:z",
            )
            buffer.seek(0)
            cursor.copy_expert(sql, buffer)


def _insert_frame(connection: Connection, table: sa.Table, frame: pl.DataFrame) -> None:
    """A plain INSERT of every row of `frame`: COPY on PostgreSQL, executemany on SQLite."""
    if _copies(connection):
        _copy_frame(connection, table, frame)
    else:
        if not _execute_many(connection, sa.insert(table), frame):
            connection.execute(sa.insert(table), _rows(frame))


# SQLAlchemy's SQLite DATETIME storage format: what its bind processor writes for a datetime.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%6f"


def _execute_many(connection: Connection, statement: Insert, frame: pl.DataFrame) -> bool:
    """SQLite: `statement` for every row of `frame`, through the driver's
    executemany, the rows made by polars as SQLAlchemy's bind processors would make them (times
    as its DATETIME text, booleans as 0 and 1, texts and numbers as they are).

    The same SQL and the same executemany as `connection.execute(statement, rows)`, without
    SQLAlchemy's per-row Python (a dict per row, a processor call per value): 26–34% of a
    first sync's write time on SQLite in two profiles (benchmarks/analysis.md, issue 33).
    False, and nothing run, for a statement this cannot run so: one with RETURNING (the
    driver's executemany returns no rows) or binding more than the frame's columns.
    """
    compiled = statement.compile(dialect=connection.dialect, column_keys=list(frame.columns))
    order = list(compiled.positiontup or ())
    if compiled.effective_returning or sorted(order) != sorted(frame.columns):
        return False
    if frame.is_empty():
        return True
    times = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime)]
    if any(frame.schema[name].time_zone not in (None, "UTC") for name in times):
        raise ValueError("times are written in UTC")
    as_driver = [pl.col(name).dt.strftime(_SQLITE_TIME) for name in times] + [
        pl.col(name).cast(pl.Int64) for name, dtype in frame.schema.items() if dtype == pl.Boolean
    ]
    # Converted a slice at a time: the times of a million fetched memberships as text at once
    # were a transient the size of a column of uuids (linking on `large`).
    for start in range(0, max(frame.height, 1), BULK_ROWS):
        rows = frame.slice(start, BULK_ROWS).select(order).with_columns(as_driver).rows()
        connection.exec_driver_sql(str(compiled), rows)
    return True


def _bulk_insert(
    connection: Connection, statement: Insert, frame: pl.DataFrame, *, json_text: Sequence[str] = ()
) -> list[Row]:
    """Run `statement` (with its ON CONFLICT and RETURNING) for every row of `frame`.

    SQLite: executemany as multi-row VALUES. PostgreSQL: COPY the frame into a temporary table of
    the target's column types, then one `INSERT … SELECT` from it, so ON CONFLICT and RETURNING
    behave as with VALUES, in the caller's transaction. `json_text` names JSON columns that the
    frame holds as JSON text (bound as text on SQLite rather than encoded a second time).
    Returns the RETURNING rows, or [] for a statement without RETURNING.
    """
    target = statement.table
    if not _copies(connection):
        if json_text:
            as_text = {name: sa.bindparam(name, type_=sa.Text) for name in json_text}
            statement = statement.values(as_text)
        # A slice of rows at a time: the whole frame as Python dicts at once was the linking
        # step's peak on `large` (1.25M fetched memberships: 1,460 → 438 MiB for that write,
        # benchmarks/analysis.md). SQLAlchemy sends executemany in batches anyway.
        if _execute_many(connection, statement, frame):
            return []
        returned: list[Row] = []
        for start in range(0, max(frame.height, 1), BULK_ROWS):
            result = connection.execute(statement, _rows(frame.slice(start, BULK_ROWS)))
            if result.returns_rows:
                returned.extend(result.all())
        return returned
    stage = sa.Table(
        f"sync_assets_stage_{target.name}",
        sa.MetaData(),
        *(sa.Column(name, target.c[name].type) for name in frame.columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    # Dropped at once so a second batch in the same transaction can stage again; on an error the
    # caller's rollback takes the table away with everything else (no DROP in an aborted one).
    stage.create(connection)
    _copy_frame(connection, stage, frame)
    result = connection.execute(statement.from_select(frame.columns, sa.select(*stage.columns)))
    rows = result.all() if result.returns_rows else []
    stage.drop(connection)
    return rows


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- Step one: courses and memberships ---------------------------------------------------------


def known_courses(connection: Connection) -> pl.DataFrame:
    """R1: the activity of each FutureLearn course uuid the platform knows."""
    statement = sa.select(
        activities.c.future_learn_course_uuid, activities.c.id, activities.c.title
    ).where(activities.c.future_learn_course_uuid.is_not(None))
    return read_frame(connection, statement, KNOWN_COURSES_SCHEMA)


# What linking reads of a stored membership (`membership_states`).
MEMBERSHIP_STATE_SCHEMA = {
    "membership_uuid": pl.String,
    "user_id": pl.String,
    "external_learner_id": pl.String,
    "answered": pl.Boolean,  # fetched, or known to be gone
    "user_forgotten": pl.Boolean,  # the linked user's `forgotten`; null: no link, or no such user
}


def membership_states(connection: Connection, membership_uuids: Keys) -> pl.DataFrame:
    """Each given membership as stored (MEMBERSHIP_STATE_SCHEMA), in one read; a membership
    never stored has no row. The four questions linking asks of them (`never_answered`,
    `usable_links`, `unlinked_answered`, `links_with_external_ids`) are answered from it: one
    index look-up per membership instead of four (a next day asks them of every membership of
    every changed course)."""
    table = future_learn_memberships

    def build(chunk: Sequence[str]) -> sa.Select:
        answered = sa.or_(table.c.fetched_at.is_not(None), table.c.gone_at.is_not(None))
        return (
            sa.select(
                table.c.membership_uuid,
                table.c.user_id,
                table.c.external_learner_id,
                answered.label("answered"),
                users.c.forgotten,
            )
            .outerjoin(users, users.c.id == table.c.user_id)
            .where(table.c.membership_uuid.in_(listed(connection, chunk)))
        )

    return _read_by_keys(connection, build, membership_uuids, MEMBERSHIP_STATE_SCHEMA)


def never_answered(states: pl.DataFrame, membership_uuids: Keys) -> pl.Series:
    """R2: of the given memberships, those never fetched, not known to be gone and linked to no
    one (sorted): each is fetched once ever. A membership already linked, by a sync or by the
    platform itself (invitation link, LTI launch, migrated rows with no `fetched_at`), is never
    asked about."""
    seen = states.filter(pl.col("answered") | pl.col("user_id").is_not_null())["membership_uuid"]
    wanted = _distinct(membership_uuids)
    return wanted.filter(~wanted.is_in(seen.implode()))


def usable_links(states: pl.DataFrame) -> pl.DataFrame:
    """R3/R5: membership → user; links to forgotten users (or to no user at all) are not used."""
    return states.filter(pl.col("user_forgotten").eq(False)).select("membership_uuid", "user_id")


def unlinked_answered(states: pl.DataFrame) -> pl.DataFrame:
    """Fetched memberships still without a user: matched again locally, never fetched again."""
    return states.filter(
        pl.col("user_id").is_null() & pl.col("external_learner_id").is_not_null()
    ).select("membership_uuid", "external_learner_id")


def links_with_external_ids(states: pl.DataFrame) -> pl.DataFrame:
    """Stored links that also have an external id (to check, not move)."""
    return states.filter(
        pl.col("user_id").is_not_null() & pl.col("external_learner_id").is_not_null()
    ).select("membership_uuid", "user_id", "external_learner_id")


def memberships_to_look_up(connection: Connection, membership_uuids: Keys) -> list[str]:
    """`never_answered`, read from the database."""
    wanted = _distinct(membership_uuids)
    return never_answered(membership_states(connection, wanted), wanted).to_list()


def stale_email_keys(connection: Connection) -> pl.DataFrame:
    """Users not forgotten whose caseless email key is missing or was computed from another email.

    One anti-join: on an unchanged platform it returns nothing, and the sync writes nothing.
    A forgotten user's email is never copied here (they are never linked, R3, and a copy would
    outlive their erasure on the platform).
    """
    keys = user_email_keys
    changed = read_frame(
        connection,
        sa.select(users.c.id, users.c.email)
        .outerjoin(keys, keys.c.user_id == users.c.id)
        .where(
            users.c.forgotten.is_not(True),
            sa.or_(keys.c.user_id.is_(None), keys.c.email != users.c.email),
        ),
        {"user_id": pl.String, "email": pl.String},
    )
    return changed.with_columns(email_key=pl.col("email").map_batches(email_keys, pl.String))


def erased_email_keys(connection: Connection) -> pl.DataFrame:
    """Key rows (user_id, email_key) of users deleted from the platform or forgotten since: the
    copies of their emails the sync keeps, to remove. Empty on an unchanged platform."""
    keys = user_email_keys
    return read_frame(
        connection,
        sa.select(keys.c.user_id, keys.c.email_key)
        .outerjoin(users, users.c.id == keys.c.user_id)
        .where(sa.or_(users.c.id.is_(None), users.c.forgotten.is_(True))),
        {"user_id": pl.String, "email_key": pl.String},
    )


def delete_email_keys(connection: Connection, user_ids: Iterable[str]) -> int:
    """Remove the given users' key rows (with the emails they hold). Returns rows removed."""
    removed = 0
    for chunk in chunks(sorted(set(user_ids))):
        removed += connection.execute(
            sa.delete(user_email_keys).where(user_email_keys.c.user_id.in_(chunk))
        ).rowcount
    return removed


def write_email_keys(connection: Connection, stale: pl.DataFrame) -> int:
    if stale.is_empty():
        return 0
    statement = dialect_insert(connection, user_email_keys)
    statement = statement.on_conflict_do_update(
        index_elements=["user_id"],
        set_={"email": statement.excluded.email, "email_key": statement.excluded.email_key},
    )
    _bulk_insert(connection, statement, stale.select("user_id", "email", "email_key"))
    if stale.height >= ANALYZE_AFTER_ROWS and connection.dialect.name == "postgresql":
        # Read by key right after (`users_matching`): without statistics PostgreSQL guesses
        # every email key common and scans the table for each chunk of keys instead of using
        # its index; autovacuum would analyze it only minutes later, or never if turned off.
        connection.exec_driver_sql(f"ANALYZE {user_email_keys.name}")
    return stale.height


def refresh_email_keys(connection: Connection) -> int:
    """Bring user_email_keys up to date with `users`: new users and changed emails written,
    deleted and forgotten users' rows removed. Returns rows written or removed."""
    erased = erased_email_keys(connection)["user_id"].to_list()
    return write_email_keys(connection, stale_email_keys(connection)) + delete_email_keys(
        connection, erased
    )


def users_matching(connection: Connection, external_learner_ids: Keys) -> pl.DataFrame:
    """Candidate users for R3: id equal to an external id, or email equal to it ignoring case.

    The database narrows the candidates through the Unicode caseless keys of user_email_keys
    (call `refresh_email_keys` first); the exact rule (id first, forgotten users never, an email
    shared by several users links no one) is applied by the caller on the frame.
    """
    keys = user_email_keys
    columns = (users.c.id, users.c.email, users.c.forgotten)

    # Two keyed reads joined to the chunk's keys, not one `id IN (…) OR id IN (…)`: PostgreSQL
    # cannot run an OR of two IN lists as index look-ups, and scanned every user for every
    # chunk, on `large` (920k users) re-reading the email matches per user: minutes a chunk.
    def build(chunk: Sequence[str]) -> sa.CompoundSelect:
        ids = listed(connection, chunk).subquery()
        caseless = listed(connection, sorted({email_key(value) for value in chunk})).subquery()
        by_id = sa.select(*columns).select_from(ids.join(users, users.c.id == ids.c.value))
        by_email = sa.select(*columns).select_from(
            caseless.join(keys, keys.c.email_key == caseless.c.value).join(
                users, users.c.id == keys.c.user_id
            )
        )
        return sa.union_all(by_id, by_email)

    # A user named in two chunks is read twice: the first row kept. A filter, not
    # `unique(subset=…)`, whose hash table cost ~3.5× as much transient memory (a million
    # users on `large`, benchmarks/linking_memory.py).
    found = _read_by_keys(connection, build, external_learner_ids, USERS_SCHEMA)
    return found.filter(pl.col("id").is_first_distinct())


def stored_memberships(
    connection: Connection,
    membership_uuids: Iterable[str] = (),
    *,
    user_id: str | None = None,
) -> pl.DataFrame:
    """Whole stored rows (MEMBERSHIP_COLUMNS) of the given memberships, or of one user's."""
    table = future_learn_memberships
    columns = [table.c[name] for name in MEMBERSHIP_COLUMNS]
    if user_id is not None:
        statement = sa.select(*columns).where(table.c.user_id == user_id)
        return read_frame(connection, statement, MEMBERSHIP_COLUMNS)
    return _read_by_keys(
        connection,
        lambda chunk: sa.select(*columns).where(
            table.c.membership_uuid.in_(listed(connection, chunk))
        ),
        membership_uuids,
        MEMBERSHIP_COLUMNS,
    )


def users_by_id(connection: Connection, user_ids: Iterable[str]) -> pl.DataFrame:
    """The given users (USERS_SCHEMA), those that exist."""
    return _read_by_keys(
        connection,
        lambda chunk: sa.select(users.c.id, users.c.email, users.c.forgotten).where(
            users.c.id.in_(listed(connection, chunk))
        ),
        user_ids,
        USERS_SCHEMA,
    )


def upsert_memberships(connection: Connection, memberships: pl.DataFrame) -> int:
    """Insert or update fetched memberships and their links, in bulk. Returns rows written.

    A null in `memberships` keeps what is stored, so rows that only relink a membership (or only
    mark it gone) sit in one frame with fully fetched rows without blanking anything.
    """
    if memberships.is_empty():
        return 0
    unknown = set(memberships.columns) - set(MEMBERSHIP_COLUMNS)
    if unknown:
        raise ValueError(f"unknown membership columns: {sorted(unknown)}")
    frame = memberships.cast({name: MEMBERSHIP_COLUMNS[name] for name in memberships.columns})
    statement = dialect_insert(connection, future_learn_memberships)
    table = future_learn_memberships
    updates = {
        name: sa.func.coalesce(statement.excluded[name], table.c[name])
        for name in frame.columns
        if name not in ("membership_uuid", "user_id", "linked_at")
    }
    # A stored link is never re-pointed (R2, R4), whoever made it: the sync only fills a gap.
    if "user_id" in frame.columns:
        updates["user_id"] = sa.func.coalesce(table.c.user_id, statement.excluded.user_id)
    if "linked_at" in frame.columns:
        updates["linked_at"] = sa.case(
            (
                table.c.user_id.is_(None),
                sa.func.coalesce(statement.excluded.linked_at, table.c.linked_at),
            ),
            else_=table.c.linked_at,
        )
    statement = statement.on_conflict_do_update(index_elements=["membership_uuid"], set_=updates)
    _bulk_insert(connection, statement, frame)
    return frame.height


# --- Step two: achievements ---------------------------------------------------------------------


def achievements_for_course(
    connection: Connection, activity_id: str, user_ids: Iterable[str] | None = None
) -> pl.DataFrame:
    """Current achievements of one activity, for all users or for the given ones."""
    columns = [achievements.c[name] for name in ACHIEVEMENT_SCHEMA]
    base = sa.select(*columns).where(achievements.c.activity_id == activity_id)
    if user_ids is None:
        return read_frame(connection, base, ACHIEVEMENT_SCHEMA)
    return _read_by_keys(
        connection,
        lambda chunk: base.where(achievements.c.user_id.in_(listed(connection, chunk))),
        user_ids,
        ACHIEVEMENT_SCHEMA,
    )


def activity_programmes(connection: Connection, activity_ids: Iterable[str]) -> pl.DataFrame:
    """R11: the programmes each activity belongs to."""

    def build(chunk: Sequence[str]) -> sa.Select:
        return (
            sa.select(programme_activities.c.activity_id, programmes.c.id, programmes.c.slug)
            .join(programmes, programmes.c.id == programme_activities.c.programme_id)
            .where(programme_activities.c.activity_id.in_(listed(connection, chunk)))
        )

    return _read_by_keys(connection, build, activity_ids, ACTIVITY_PROGRAMMES_SCHEMA)


def programme_enrolments(connection: Connection, user_ids: Iterable[str]) -> pl.DataFrame:
    """R11/R12/C1: every programme enrolment of the given users."""
    columns = [user_programme_enrolments.c[name] for name in ENROLMENT_SCHEMA]

    def build(chunk: Sequence[str]) -> sa.Select:
        return sa.select(*columns).where(
            user_programme_enrolments.c.user_id.in_(listed(connection, chunk))
        )

    return _read_by_keys(connection, build, user_ids, ENROLMENT_SCHEMA)


def programme_structure(connection: Connection) -> pl.DataFrame:
    """C1/C3: each programme's activities with their grouping, requirement, credit and category."""
    statement = (
        sa.select(
            programmes.c.id,
            programmes.c.slug,
            programme_activity_groupings.c.id,
            programme_activity_groupings.c.title,
            programme_activity_groupings.c.required_for_completion,
            programme_activity_groupings.c.sort_key,
            programme_activities.c.activity_id,
            activities.c.credit,
            activities.c.category,
        )
        .select_from(programme_activities)
        .join(programmes, programmes.c.id == programme_activities.c.programme_id)
        .join(activities, activities.c.id == programme_activities.c.activity_id)
        .outerjoin(
            programme_activity_groupings,
            programme_activity_groupings.c.id
            == programme_activities.c.programme_activity_grouping_id,
        )
        .order_by(programmes.c.slug, programme_activity_groupings.c.sort_key, activities.c.id)
    )
    return read_frame(connection, statement, PROGRAMME_STRUCTURE_SCHEMA)


@dataclass(frozen=True)
class CourseState:
    """A course's last successful sync: its report's size and what it was applied from."""

    enrolment_count: int
    report_fingerprint: str | None = None
    platform_fingerprint: str | None = None


def last_course_states(
    connection: Connection, course_uuids: Iterable[str]
) -> dict[str, CourseState]:
    table = course_sync_state
    states: dict[str, CourseState] = {}
    for chunk in key_chunks(course_uuids):
        statement = sa.select(
            table.c.course_uuid,
            table.c.enrolment_count,
            table.c.report_fingerprint,
            table.c.platform_fingerprint,
        ).where(table.c.course_uuid.in_(listed(connection, chunk)))
        states.update(
            (course, CourseState(*rest)) for course, *rest in connection.execute(statement)
        )
    return states


def record_course_state(
    connection: Connection,
    course_uuid: str,
    enrolment_count: int,
    dagster_run_id: str | None,
    *,
    report_fingerprint: str | None = None,
    platform_fingerprint: str | None = None,
    row_digests: bytes | None = None,
) -> None:
    statement = dialect_insert(connection, course_sync_state)
    values = {
        "course_uuid": course_uuid,
        "enrolment_count": enrolment_count,
        "synced_at": now_utc(),
        "dagster_run_id": dagster_run_id,
        "report_fingerprint": report_fingerprint,
        "platform_fingerprint": platform_fingerprint,
        "row_digests": row_digests,
    }
    connection.execute(
        statement.values(values).on_conflict_do_update(
            index_elements=["course_uuid"],
            set_={name: statement.excluded[name] for name in values if name != "course_uuid"},
        )
    )


def stored_row_digests(connection: Connection, course_uuid: str) -> tuple[str, bytes] | None:
    """The platform fingerprint a course's last write left and the row digests it was applied
    from (sync/row_digests.py), when both are stored; read under the course's lock."""
    table = course_sync_state
    row = connection.execute(
        sa.select(table.c.platform_fingerprint, table.c.row_digests).where(
            table.c.course_uuid == course_uuid
        )
    ).first()
    if row is None or row.platform_fingerprint is None or row.row_digests is None:
        return None
    return row.platform_fingerprint, bytes(row.row_digests)


@dataclass
class AppliedChanges:
    """What one batch wrote; zeros everywhere when nothing changed."""

    memberships: int = 0
    created: int = 0
    updated: int = 0
    transitions: int = 0
    completion_events: int = 0
    enrolments: int = 0
    course_state: int = 0
    # Planned changes not written: the stored row was no longer what they were planned from.
    stale: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def rows_written(self) -> int:
        return (
            self.memberships
            + self.created
            + self.updated
            + self.transitions
            + self.completion_events
            + self.enrolments
            + self.course_state
        )


def apply_achievement_changes(
    connection: Connection, changes: pl.DataFrame, *, dagster_run_id: str | None = None
) -> AppliedChanges:
    """Create or update achievements, with their transitions (R10) and completion events.

    Each change is conditional on the state it was planned from: a new achievement is inserted
    only if none exists, an existing one is updated only while its stored state and progress are
    still `previous_state` and `previous_progress`. A stale change writes nothing, no transition
    and no event, so two writers that planned from the same state never both apply it.
    A transition row is written for each written row whose state differs from its previous state
    (a new achievement starts `enrolled`); a completion event for each that becomes `complete`.
    Events are unique per achievement, so a retried batch cannot produce a second one.
    """
    applied = AppliedChanges()
    if changes.is_empty():
        return applied
    frame = changes.select(list(ACHIEVEMENT_CHANGE_SCHEMA)).cast(ACHIEVEMENT_CHANGE_SCHEMA)
    is_new = pl.col("previous_state").is_null()
    if frame.filter(~is_new & pl.col("previous_progress").is_null()).height:
        raise ValueError("a change to an existing achievement needs its previous_progress")
    stamp = now_utc()
    ids = pl.concat(
        [
            _insert_new_achievements(connection, frame.filter(is_new), stamp),
            _update_achievements(connection, frame.filter(~is_new), stamp),
        ]
    )
    written = frame.join(ids, on=["user_id", "activity_id"], how="inner", validate="1:1")
    applied.stale = frame.height - written.height
    applied.created = written.filter(is_new).height
    applied.updated = written.height - applied.created

    state_changed = written.with_columns(
        from_state=pl.col("previous_state").fill_null(INITIAL_STATE)
    ).filter(pl.col("state") != pl.col("from_state"))
    applied.by_state = dict(state_changed.group_by("state").len().iter_rows())
    applied.transitions = _write_transitions(connection, state_changed, stamp, dagster_run_id)
    applied.completion_events = _write_completion_events(
        connection, state_changed.filter(pl.col("state") == "complete"), stamp, dagster_run_id
    )
    return applied


def _written_ids(rows: Sequence[Any]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_WRITTEN_SCHEMA, orient="row")


def _insert_new_achievements(
    connection: Connection, new: pl.DataFrame, stamp: datetime
) -> pl.DataFrame:
    if new.is_empty():
        return _written_ids([])
    statement = (
        dialect_insert(connection, achievements)
        .on_conflict_do_nothing(index_elements=["user_id", "activity_id"])
        .returning(achievements.c.id, achievements.c.user_id, achievements.c.activity_id)
    )
    values = new.select(
        "user_id", "activity_id", "programme_id", "progress", "state", "completed_at"
    ).with_columns(created_at=pl.lit(stamp, UTC_TIME), updated_at=pl.lit(stamp, UTC_TIME))
    return _written_ids(_bulk_insert(connection, statement, values))


def _update_achievements(
    connection: Connection, existing: pl.DataFrame, stamp: datetime
) -> pl.DataFrame:
    if existing.is_empty():
        return _written_ids([])
    plan = achievement_plan
    plan.create(connection)
    _insert_frame(connection, plan, existing.select([c.name for c in plan.columns]))
    statement = (
        sa.update(achievements)
        .where(
            achievements.c.user_id == plan.c.user_id,
            achievements.c.activity_id == plan.c.activity_id,
            achievements.c.state == plan.c.previous_state,
            achievements.c.progress == plan.c.previous_progress,
        )
        .values(
            progress=plan.c.progress,
            state=plan.c.state,
            completed_at=plan.c.completed_at,
            updated_at=stamp,
        )
        .returning(achievements.c.id, achievements.c.user_id, achievements.c.activity_id)
    )
    written = _written_ids(connection.execute(statement).all())
    plan.drop(connection)
    return written


def _write_transitions(
    connection: Connection, changed: pl.DataFrame, stamp: datetime, dagster_run_id: str | None
) -> int:
    if changed.is_empty():
        return 0
    run = {"dagster_run_id": dagster_run_id}
    metadata = [json.dumps(json.loads(cause or "{}") | run) for cause in changed["cause"]]
    rows = changed.select(
        "achievement_id",
        "from_state",
        pl.col("state").alias("to_state"),
        pl.Series("metadata", metadata, pl.String),
        pl.lit(stamp, UTC_TIME).alias("created_at"),
    )
    statement = dialect_insert(connection, achievement_transitions)
    _bulk_insert(connection, statement, rows, json_text=["metadata"])
    return rows.height


def _write_completion_events(
    connection: Connection, completed: pl.DataFrame, stamp: datetime, dagster_run_id: str | None
) -> int:
    if completed.is_empty():
        return 0
    rows = completed.select(
        "achievement_id",
        "user_id",
        "activity_id",
        "programme_id",
        pl.lit(dagster_run_id, pl.String).alias("dagster_run_id"),
        pl.lit(stamp, UTC_TIME).alias("created_at"),
    )
    statement = (
        dialect_insert(connection, completion_events)
        .on_conflict_do_nothing(index_elements=["achievement_id"])
        .returning(completion_events.c.id)
    )
    return len(_bulk_insert(connection, statement, rows))


def ensure_programme_enrolments(connection: Connection, enrolments: pl.DataFrame) -> int:
    """R12: enrol users on programmes where they have no enrolment yet; existing ones stay."""
    if enrolments.is_empty():
        return 0
    frame = enrolments.select("user_id", "programme_id", "auto_enrolled").with_columns(
        state=pl.lit("enrolled"), created_at=pl.lit(now_utc(), UTC_TIME)
    )
    statement = (
        dialect_insert(connection, user_programme_enrolments)
        .on_conflict_do_nothing(index_elements=["user_id", "programme_id"])
        .returning(user_programme_enrolments.c.id)
    )
    return len(_bulk_insert(connection, statement, frame))


@dataclass(frozen=True)
class CourseSyncBatch:
    """Everything one course's sync writes; applied in one transaction by apply_course_sync."""

    memberships: pl.DataFrame = field(default_factory=lambda: pl.DataFrame())
    achievement_changes: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=ACHIEVEMENT_CHANGE_SCHEMA)
    )
    programme_enrolments: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"user_id": pl.String, "programme_id": pl.String, "auto_enrolled": pl.Boolean}
        )
    )
    # (course uuid, enrolment count) when the count differs from the one stored.
    course_state: tuple[str, int] | None = None

    @property
    def is_empty(self) -> bool:
        return (
            self.memberships.is_empty()
            and self.achievement_changes.is_empty()
            and self.programme_enrolments.is_empty()
            and self.course_state is None
        )


def write_course_sync(
    connection: Connection, batch: CourseSyncBatch, *, dagster_run_id: str | None = None
) -> AppliedChanges:
    """Write a course's links, achievements, transitions, events and enrolments.

    The caller holds the transaction (and, for a sync, the course's writer lock): either all of
    it is committed or none of it. An empty batch sends no statement (R13).
    """
    if batch.is_empty:
        return AppliedChanges()
    memberships = upsert_memberships(connection, batch.memberships)
    applied = apply_achievement_changes(
        connection, batch.achievement_changes, dagster_run_id=dagster_run_id
    )
    applied.memberships = memberships
    applied.enrolments = ensure_programme_enrolments(connection, batch.programme_enrolments)
    if batch.course_state is not None:
        record_course_state(connection, *batch.course_state, dagster_run_id)
        applied.course_state = 1
    return applied


def apply_course_sync(
    engine: Engine, batch: CourseSyncBatch, *, dagster_run_id: str | None = None
) -> AppliedChanges:
    """`write_course_sync` in a transaction of its own (R13: an empty batch opens none)."""
    if batch.is_empty:
        return AppliedChanges()
    with engine.begin() as connection:
        return write_course_sync(connection, batch, dagster_run_id=dagster_run_id)
