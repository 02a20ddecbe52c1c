"""Shared fixtures: a fresh platform database per test, on SQLite and on PostgreSQL; a key space
of its own in Redis for the shared HTTP cache (see the Redis section); the system Chromium for
the browser test of the Dagster UI (see the Chromium section).

PostgreSQL comes from SYNC_ASSETS_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432, database `test`). When it cannot be reached the PostgreSQL tests are skipped with
the reason, except in CI (CI=true) or with SYNC_ASSETS_REQUIRE_POSTGRES=1, where they fail.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NoReturn

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from sync_assets.partners_api import cache as cache_module
from sync_assets.partners_api.cache import redacted
from sync_assets.platform.database import create_platform_engine, parse_database_url
from sync_assets.platform.migrate import upgrade

# The S3 API server (moto) for the storage and deployment tests.
pytest_plugins = ["sync_assets_tests.s3_server"]

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _required(flag: str) -> bool:
    """Whether a missing server fails the tests that need it (CI, or the service's own flag)."""
    flags = (os.environ.get("CI", ""), os.environ.get(flag, ""))
    return any(flag.lower() in ("1", "true", "yes") for flag in flags)


def _skip_or_fail(reason: str, service: str, variable: str, flag: str) -> NoReturn:
    if _required(flag):
        pytest.fail(f"{reason}; CI requires it (set {variable})")
    pytest.skip(f"{reason}; set {variable} to run the {service} tests")


def _report_line(service: str, where: str | None, reason: str, flag: str) -> str:
    if where is not None:
        return f"{service} tests: on {where}"
    verdict = "required, will fail" if _required(flag) else "skipped"
    return f"{service} tests: {verdict}: {reason}"


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
        _skip_or_fail(
            reason, "PostgreSQL", "SYNC_ASSETS_TEST_POSTGRES_URL", "SYNC_ASSETS_REQUIRE_POSTGRES"
        )
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


def on_backends(variants: dict[str, object], on_postgres: set[str]) -> list:
    """(backend, variant) parameters: every variant on SQLite, those named in `on_postgres` on
    PostgreSQL too. For scenarios whose variants differ upstream of the database (which fault,
    which phase), so a representative few keep the PostgreSQL paths exercised at a fraction of
    the time. Use with `indirect=` for the backend fixture."""
    assert on_postgres <= variants.keys(), on_postgres - variants.keys()
    return [
        pytest.param("sqlite", variant, id=f"sqlite-{name}") for name, variant in variants.items()
    ] + [
        pytest.param("postgresql", variant, id=f"postgresql-{name}", marks=pytest.mark.postgres)
        for name, variant in variants.items()
        if name in on_postgres
    ]


# A scenario whose checks are of Dagster or of the Partners API side, not of the platform
# database: run on SQLite only (its database steps are the same as in the scenarios that run on
# PostgreSQL as well). For tests that take the `database_url` fixture (or `world`).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


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
    return migrated(empty_engine)


@cache
def _migrated_sqlite_template() -> Path:
    """A SQLite platform database migrated to the latest revision, once per test process."""
    folder = Path(tempfile.mkdtemp(prefix="sync_assets_migrated_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "platform.sqlite3"
    engine = create_platform_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def migrated(engine: Engine) -> Engine:
    """`engine`'s new, empty platform database migrated to the latest revision. On SQLite, a copy
    of a file migrated once per test process: the migrations cost 0.3 s a test (a second on a
    busy machine), the copy nothing, and the file is the one they would have written."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        shutil.copyfile(_migrated_sqlite_template(), url.database or "")
    else:
        upgrade(engine)
    return engine


# The slowest scenarios (seconds to minutes each: real processes, a browser, many syncs) go first,
# so that xdist's workers share them out at the start and finish together, instead of one worker
# meeting a long test at the end of the queue while the other idles. Order within a module is
# kept (the crash tests group by their module-scoped baseline).
SLOW_FIRST = (
    "deploy_tests/test_multi_process_deployment.py",
    "ui_tests/",
    "benchmarks_tests/",
    "defs_tests/test_crash_and_overlap.py",
    "defs_tests/test_hostile_upstream.py",
    "defs_tests/test_certificate_definitions.py",
    "defs_tests/test_skip_unchanged.py",
    "defs_tests/test_course_partition_keys.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, slow in enumerate(SLOW_FIRST) if slow in path), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order inside each group stays as collected


def pytest_report_header() -> list[str]:
    url, reason = _postgres_admin_url()
    redis_url, redis_reason = _redis_server_url()
    chromium, chromium_reason = _chromium()
    return [
        _report_line(
            "PostgreSQL",
            url.render_as_string() if url is not None else None,
            reason,
            "SYNC_ASSETS_REQUIRE_POSTGRES",
        ),
        _report_line(
            "Redis",
            redacted(redis_url) if redis_url is not None else None,
            redis_reason,
            "SYNC_ASSETS_REQUIRE_REDIS",
        ),
        _report_line(
            "Browser (Chromium)",
            chromium or None,
            chromium_reason,
            "SYNC_ASSETS_REQUIRE_CHROMIUM",
        ),
    ]


# --- Redis (the shared HTTP cache) ------------------------------------------------------------
# SYNC_ASSETS_TEST_REDIS_URL (default: the local server, db 0). Each test works under a key
# prefix of its own and deletes its keys afterwards: the server may be shared, so nothing here
# flushes a database. Unreachable: skipped with the reason, except in CI (CI=true) or with
# SYNC_ASSETS_REQUIRE_REDIS=1, where the tests fail.

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


@cache
def _redis_server_url() -> tuple[str | None, str]:
    url = os.environ.get("SYNC_ASSETS_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        first_line = str(error).strip().splitlines()[0]
        return None, f"Redis at {redacted(url)} unreachable ({first_line})"
    finally:
        client.close()
    return url, ""


@dataclass(frozen=True)
class RedisCache:
    url: str  # what SYNC_ASSETS_HTTP_CACHE_URL would say
    prefix: str  # every key the cache writes starts with it
    client: redis.Redis

    def stored_keys(self) -> list[bytes]:
        return sorted(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))

    def stored(self) -> list[bytes]:
        """Each key with everything in it, whatever its type, as one blob."""
        blobs = []
        for key in self.stored_keys():
            kind = self.client.type(key)
            if kind == b"string":
                values = [self.client.get(key) or b""]
            elif kind == b"list":
                values = self.client.lrange(key, 0, -1)
            elif kind == b"zset":
                values = self.client.zrange(key, 0, -1)
            else:
                raise AssertionError(f"unexpected {kind!r} at {key!r}")
            blobs.append(b"\n".join([key, *values]))
        return blobs


@pytest.fixture
def redis_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisCache]:
    """The Redis server, with the HTTP cache's keys under a prefix unique to this test."""
    url, reason = _redis_server_url()
    if url is None:
        _skip_or_fail(reason, "Redis", "SYNC_ASSETS_TEST_REDIS_URL", "SYNC_ASSETS_REQUIRE_REDIS")
    prefix = f"sync_assets_test:{uuid.uuid4().hex[:12]}:{cache_module.REDIS_KEY_PREFIX}"
    monkeypatch.setattr(cache_module, "REDIS_KEY_PREFIX", prefix)
    monkeypatch.setattr(cache_module, "OUTAGES", cache_module.Outages())
    client = redis.Redis.from_url(url)
    try:
        yield RedisCache(url, prefix, client)
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


# --- Chromium (the browser test of the Dagster UI) ---------------------------------------------
# SYNC_ASSETS_CHROMIUM (default: `chromium` on the PATH, the Debian package) driven by Playwright;
# Playwright's own browser download needs the internet, the system package does not. Missing:
# skipped with the reason, except in CI (CI=true) or with SYNC_ASSETS_REQUIRE_CHROMIUM=1, where
# the test fails (`.ci/run` installs the package first).


@cache
def _chromium() -> tuple[str, str]:
    """The Chromium executable, or "" and why there is none."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "", "Playwright is not installed (pip install -e '.[dev]')"
    wanted = os.environ.get("SYNC_ASSETS_CHROMIUM") or "chromium"
    found = shutil.which(wanted)
    if found is None:
        return "", f"no Chromium at {wanted!r} (apt-get install chromium)"
    return found, ""


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The system Chromium's path, or skip (fail in CI) when there is none."""
    path, reason = _chromium()
    if not path:
        _skip_or_fail(reason, "browser", "SYNC_ASSETS_CHROMIUM", "SYNC_ASSETS_REQUIRE_CHROMIUM")
    return path
