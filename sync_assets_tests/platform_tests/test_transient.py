"""Which real database errors are transient (a step retries them) and which are not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.transient import is_transient


def _raised(action: Callable[[], object]) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as raised:
        action()
    return raised.value


def test_sqlite_locked_is_transient_and_a_missing_table_is_not(tmp_path) -> None:
    engine = create_platform_engine(f"sqlite:///{tmp_path / 'platform.sqlite3'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with engine.connect() as holder, engine.connect() as waiter:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
        waiter.exec_driver_sql("PRAGMA busy_timeout = 0")
        locked = _raised(lambda: waiter.exec_driver_sql("BEGIN IMMEDIATE"))
        holder.exec_driver_sql("ROLLBACK")
        missing = _raised(lambda: waiter.exec_driver_sql("SELECT * FROM missing"))
    engine.dispose()
    assert "locked" in str(locked)
    assert is_transient(locked)
    assert not is_transient(missing)
    # What a step raises, caused by it, is judged by its cause.
    try:
        raise RuntimeError("course failed") from locked
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


@pytest.fixture
def postgres(postgres_schema_url: URL) -> Iterator[Engine]:
    engine = create_platform_engine(postgres_schema_url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id integer PRIMARY KEY, n integer)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1, 0)")
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_postgres_transient_errors(postgres: Engine) -> None:
    # A concurrent update under REPEATABLE READ: serialization_failure (40001).
    with postgres.connect() as first, postgres.connect() as second:
        first.execution_options(isolation_level="REPEATABLE READ")
        first.begin()
        first.exec_driver_sql("SELECT n FROM t WHERE id = 1")
        with second.begin():
            second.exec_driver_sql("UPDATE t SET n = 1 WHERE id = 1")
        conflict = _raised(lambda: first.exec_driver_sql("UPDATE t SET n = 2 WHERE id = 1"))
        first.rollback()
    assert getattr(conflict.orig, "pgcode", None) == "40001"
    assert is_transient(conflict)

    # A row lock not had within lock_timeout: lock_not_available (55P03).
    with postgres.connect() as holder, postgres.connect() as waiter:
        holder.begin()
        holder.exec_driver_sql("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        waiter.begin()
        waiter.exec_driver_sql("SET LOCAL lock_timeout = '50ms'")
        timed_out = _raised(lambda: waiter.exec_driver_sql("SELECT * FROM t FOR UPDATE"))
        waiter.rollback()
        holder.rollback()
    assert is_transient(timed_out)

    # The server ends the connection (a restart, a failover, an administrator).
    with postgres.connect() as victim, postgres.connect() as admin:
        pid = victim.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        admin.commit()
        dropped = _raised(lambda: victim.exec_driver_sql("SELECT 1"))
    assert is_transient(dropped)

    # Nothing that would fail the same way again.
    with postgres.connect() as connection:
        duplicate = _raised(lambda: connection.exec_driver_sql("INSERT INTO t VALUES (1, 0)"))
        connection.rollback()
        missing = _raised(lambda: connection.exec_driver_sql("SELECT * FROM missing"))
    assert not is_transient(duplicate)
    assert not is_transient(missing)


def test_postgres_unreachable_is_transient() -> None:
    engine = create_platform_engine("postgresql://nobody@127.0.0.1:9/none")
    refused = _raised(engine.connect)
    engine.dispose()
    assert is_transient(refused)
