"""Shared fixtures: a fresh platform database per test, on SQLite and on PostgreSQL.

PostgreSQL comes from SYNC_ASSETS_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432, database `test`). When it cannot be reached the PostgreSQL tests are skipped with
the reason, except in CI (CI=true) or with SYNC_ASSETS_REQUIRE_POSTGRES=1, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from sync_assets.platform.database import create_platform_engine, parse_database_url
from sync_assets.platform.migrate import upgrade

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _postgres_required() -> bool:
    flags = (os.environ.get("CI", ""), os.environ.get("SYNC_ASSETS_REQUIRE_POSTGRES", ""))
    return any(flag.lower() in ("1", "true", "yes") for flag in flags)


@cache
def _postgres_admin_url() -> tuple[URL | None, str]:
    """The server to test against, or None and why it cannot be used."""
    raw = os.environ.get("SYNC_ASSETS_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)
    url = parse_database_url(raw)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as error:
        first_line = str(error.orig).strip().splitlines()[0]
        return None, f"PostgreSQL at {url.render_as_string()} unreachable ({first_line})"
    finally:
        engine.dispose()
    return url, ""


def postgres_admin_url() -> URL:
    """The PostgreSQL server URL, or skip (fail in CI) when there is none."""
    url, reason = _postgres_admin_url()
    if url is None:
        if _postgres_required():
            pytest.fail(f"{reason}; CI requires it (set SYNC_ASSETS_TEST_POSTGRES_URL)")
        pytest.skip(f"{reason}; set SYNC_ASSETS_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return url


def with_search_path(url: URL, schema: str) -> URL:
    return url.update_query_dict({"options": f"-csearch_path={schema}"})


@pytest.fixture
def postgres_schema_url() -> Iterator[URL]:
    """A URL whose connections see only a new, empty schema; dropped afterwards."""
    admin_url = postgres_admin_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(admin_url, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def postgres_database_url() -> Iterator[URL]:
    """A whole new database (for tools, such as Dagster, that manage their own schema)."""
    admin_url = postgres_admin_url()
    name = f"sync_assets_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty platform database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    url: URL = request.getfixturevalue("postgres_schema_url")
    return url.render_as_string(hide_password=False)


@pytest.fixture
def empty_engine(database_url: str) -> Iterator[Engine]:
    engine = create_platform_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def platform_engine(empty_engine: Engine) -> Engine:
    """A platform database migrated to the latest revision."""
    upgrade(empty_engine)
    return empty_engine


def pytest_report_header() -> str:
    url, reason = _postgres_admin_url()
    if url is not None:
        return f"PostgreSQL tests: on {url.render_as_string()}"
    verdict = "required, will fail" if _postgres_required() else "skipped"
    return f"PostgreSQL tests: {verdict}: {reason}"
