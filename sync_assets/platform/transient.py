"""Which platform database errors are transient: worth doing the same work again shortly.

A connection that dropped or could not be made (a restart, a failover), a transaction the server
rolled back to break a deadlock or a serialization conflict, a lock not had in time (PostgreSQL's
lock_timeout, SQLite's locked or busy database: what `transactions` waits for and gives up on).
Anything else (a missing table, a constraint violated, a bad value, a bug) would fail the same
way again, and is not.
"""

from __future__ import annotations

import sqlite3

import psycopg2
import sqlalchemy as sa

from sync_assets.platform.transactions import LOCK_NOT_AVAILABLE

# SQLSTATEs (PostgreSQL appendix A): the server rolled the transaction back, or is going away.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        LOCK_NOT_AVAILABLE,  # 55P03: lock_timeout
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, in recovery)
        "53300",  # too_many_connections
    }
)
CONNECTION_EXCEPTION_CLASS = "08"
# SQLite primary result codes: another connection holds the database or a table.
SQLITE_BUSY, SQLITE_LOCKED = 5, 6


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a transient database error."""
    seen: BaseException | None = error
    while seen is not None:
        if _transient(seen):
            return True
        seen = seen.__cause__
    return False


def _transient(error: BaseException) -> bool:
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:  # SQLAlchemy recognised a dropped connection
            return True
        return error.orig is not None and _transient_driver_error(error.orig)
    return _transient_driver_error(error)


def _transient_driver_error(error: BaseException) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return getattr(error, "sqlite_errorcode", 0) & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    if not isinstance(error, psycopg2.Error):
        return False
    if error.pgcode is None:
        # Not the server's answer but libpq's: the connection could not be made or was lost.
        return isinstance(error, psycopg2.OperationalError)
    return error.pgcode in TRANSIENT_SQLSTATES or error.pgcode.startswith(
        CONNECTION_EXCEPTION_CLASS
    )
