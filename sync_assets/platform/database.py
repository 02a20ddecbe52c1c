"""Engines for the platform database, with errors that name the setting instead of a traceback."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from sync_assets.settings import ConfigurationError, platform_database_url

SETTING = "PLATFORM_DATABASE_URL"

# Multi-row INSERTs carry up to this many rows per statement, so a batch of achievement changes
# costs a handful of statements per table, not one round trip per learner.
INSERT_PAGE_SIZE = 10_000


def parse_database_url(raw: str) -> URL:
    """Parse and normalise a platform database URL, or raise ConfigurationError."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as error:
        raise ConfigurationError(SETTING, f"not a valid SQLAlchemy URL ({error})") from None
    backend, _, driver = url.drivername.partition("+")
    # Heroku-style `postgres://` and a bare `postgresql://` mean psycopg2, the driver we ship;
    # SQLAlchemy 2.1 would otherwise look for psycopg 3.
    if backend in ("postgres", "postgresql") and driver in ("", "psycopg2"):
        return url.set(drivername="postgresql+psycopg2")
    if backend == "postgresql":
        raise ConfigurationError(
            SETTING, f"driver '{url.drivername}' is not supported; use postgresql+psycopg2"
        )
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigurationError(
                SETTING, "an in-memory SQLite database cannot be shared; give a file path"
            )
        return url
    raise ConfigurationError(
        SETTING, f"unsupported database '{backend}'; use sqlite:/// or postgresql://"
    )


def database_kind(raw: str) -> str:
    """The UI's kind tag for the platform database at `raw`: `postgres` or `sqlite`."""
    return "postgres" if parse_database_url(raw).get_backend_name() == "postgresql" else "sqlite"


def describe(url: URL) -> str:
    """The URL as safe to print: never the password."""
    return url.render_as_string(hide_password=True)


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    # WAL lets the Dagster UI read while a sync writes; the busy timeout rides out short locks.
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def create_platform_engine(raw_url: str | None = None) -> Engine:
    """An engine for the platform database at `raw_url` (default: PLATFORM_DATABASE_URL).

    `hide_parameters`: an error's text never quotes the values bound to its statement (learners'
    emails when linking, user ids), as that text reaches logs, the event log and alerts.
    """
    url = parse_database_url(raw_url or platform_database_url())
    if url.get_backend_name() == "sqlite":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, insertmanyvalues_page_size=INSERT_PAGE_SIZE, hide_parameters=True
        )
        sa.event.listen(engine, "connect", _configure_sqlite)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        insertmanyvalues_page_size=INSERT_PAGE_SIZE,
        hide_parameters=True,
        connect_args={"connect_timeout": 10, "application_name": "sync_assets"},
    )


def check_connection(engine: Engine) -> None:
    """Connect once, turning a connection failure into one line that names the setting."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise ConfigurationError(
            SETTING, f"cannot connect to {describe(engine.url)}: {reason}"
        ) from None


def dialect_insert(connection: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT on whichever of our two dialects is connected."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
