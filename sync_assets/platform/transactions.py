"""Write transactions that serialise writers across processes and machines.

Two syncs (or a sync, a resync and a rerun from the UI) may overlap on a course. Each course is
planned and written inside `course_write_transaction`, which holds a lock that every writer of
that course takes first, so the second writer plans from what the first committed and finds
nothing left to do:

- PostgreSQL: a transaction-scoped advisory lock keyed by the schema and the course (released
  at commit or rollback, and by the server when the holder's connection dies, e.g. `kill -9`);
- SQLite: the database's write lock (`BEGIN IMMEDIATE`), the only lock SQLite has.

The wait is bounded: a writer that cannot get the lock in time raises `CourseBusyError` naming
the course, and the caller reports that course as not applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# The first key of every advisory lock this project takes; the second is the course's hash.
ADVISORY_NAMESPACE = 0x5A5C
# SQLSTATE 55P03: lock_not_available, what lock_timeout raises.
LOCK_NOT_AVAILABLE = "55P03"
SQLITE_BUSY_TIMEOUT_MS = 30_000  # database.py sets this on every SQLite connection


class CourseBusyError(RuntimeError):
    """Another writer held the course's lock for longer than this writer would wait."""

    def __init__(self, course_uuid: str, timeout_seconds: float) -> None:
        super().__init__(
            f"another sync held course {course_uuid} for more than {timeout_seconds:g} s; "
            "not applied by this run (the other writer applies it)"
        )
        self.course_uuid = course_uuid


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the write lock from its first statement on SQLite too."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            with _commit_or_roll_back(connection):
                yield connection
        else:
            with connection.begin():
                yield connection


@contextmanager
def _commit_or_roll_back(connection: Connection) -> Iterator[None]:
    """End a transaction begun with a driver-level BEGIN, which SQLAlchemy does not track."""
    try:
        yield
        connection.exec_driver_sql("COMMIT")
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise


@contextmanager
def course_write_transaction(
    engine: Engine, course_uuid: str, *, timeout_seconds: float
) -> Iterator[Connection]:
    """A transaction holding the course's writer lock, waited for at most `timeout_seconds`."""
    if engine.dialect.name == "sqlite":
        with _sqlite_write_lock(engine, course_uuid, timeout_seconds) as connection:
            yield connection
        return
    with engine.connect() as connection, connection.begin():
        _take_advisory_lock(connection, course_uuid, timeout_seconds)
        yield connection


def _take_advisory_lock(connection: Connection, course_uuid: str, timeout_seconds: float) -> None:
    timeout_ms = str(max(1, int(timeout_seconds * 1000)))
    connection.execute(sa.select(sa.func.set_config("lock_timeout", timeout_ms, True)))
    try:
        # Advisory locks are per database; the schema in the key keeps two platforms that share
        # a database (one schema each) from waiting for each other.
        key = sa.func.hashtext(sa.func.current_schema() + ":" + course_uuid)
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, key)))
    except sa.exc.OperationalError as error:
        if getattr(error.orig, "pgcode", None) == LOCK_NOT_AVAILABLE:
            raise CourseBusyError(course_uuid, timeout_seconds) from None
        raise
    # The writes that follow are not bounded by the lock wait.
    connection.execute(sa.select(sa.func.set_config("lock_timeout", "0", True)))


@contextmanager
def _sqlite_write_lock(
    engine: Engine, course_uuid: str, timeout_seconds: float
) -> Iterator[Connection]:
    with engine.connect() as connection:
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(timeout_seconds * 1000))}")
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError as error:
            if "locked" in str(error.orig) or "busy" in str(error.orig):
                raise CourseBusyError(course_uuid, timeout_seconds) from None
            raise
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        with _commit_or_roll_back(connection):
            yield connection
