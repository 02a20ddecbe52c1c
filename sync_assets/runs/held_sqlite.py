"""Dagster's SQLite storage with its databases held open: the embedded default's instance.

Dagster's SQLite storages make a new engine for every call (SQLAlchemy's NullPool) and close it
after: each event a run stores opens the run's database (and for an asset event the index's),
commits and closes it, and the last close of a WAL database checkpoints it and syncs it to disk.
A night of 27 courses stores ~300 events; a run of 27 partitions x 4 assets takes 0.22-0.33 of
its wall held open (benchmarks/partition_events.py --pooled, on SQLite).

`HeldSqliteInstance` (named by the project's dagster.yaml, `instance_class:`) is Dagster's
instance whose default storage is `HeldSqliteStorage`: the same SQLite files under the
instance's home, its run and event log storages holding their databases open (the runs', the
event log's index and its most recent run databases), closed when the instance is disposed. An
instance class, not a `storage:` key, because only the instance knows its home: a `storage:` key
would have to name it (DAGSTER_HOME), which commands run with a temporary home (`dg check defs`,
`dagster dev` without DAGSTER_HOME) do not set. A run's process gets the same instance through
the instance ref, so run workers, the daemon and the webserver hold theirs too.

One of the modules allowed Dagster's private APIs (sync_assets_tests/runs_tests/
test_dagster_internals.py): each behaviour relied on (Dagster 1.13.27) is named where used and
pinned by sync_assets_tests/defs_tests/test_dagster_instance.py's tests of the embedded instance.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData

# The event log keeps a database per run: those held open beyond the index are the most recently
# used few (a run's process uses its own; the webserver reads many, and would otherwise hold a
# file open for every run it ever showed).
HELD_RUN_DATABASES = 4
# Dagster's own busy timeout for its event log databases (SQLITE_BUSY_TIMEOUT_SECONDS); the run
# and schedule storages use sqlite3's default, as Dagster's do.
EVENT_LOG_BUSY_TIMEOUT_SECONDS = 120


class _HeldEngines:
    """An engine per database URL, each keeping up to two connections open (more are opened, and
    closed when returned, while several need one at once); past `limit` engines the least
    recently used is closed."""

    def __init__(self, limit: int, connect_args: Mapping[str, Any] | None = None) -> None:
        self._limit = limit
        self._connect_args = dict(connect_args or {})
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._lock = threading.Lock()

    def engine(self, url: str) -> sa.Engine:
        with self._lock:
            engine = self._engines.pop(url, None) or self._create(url)
            self._engines[url] = engine
            while len(self._engines) > self._limit:
                _, oldest = self._engines.popitem(last=False)
                oldest.dispose()
            return engine

    def _create(self, url: str) -> sa.Engine:
        engine = sa.create_engine(
            url, pool_size=2, max_overflow=-1, connect_args=self._connect_args
        )
        sa.event.listen(engine, "connect", _sync_at_checkpoints)
        return engine

    @contextmanager
    def transaction(self, url: str) -> Iterator[sa.Connection]:
        """A connection in a transaction, as Dagster's storages give one (`connect`)."""
        with self.engine(url).connect() as connection, connection.begin():
            yield connection

    def close(self) -> None:
        with self._lock:
            while self._engines:
                _, engine = self._engines.popitem()
                engine.dispose()


def _sync_at_checkpoints(dbapi_connection: Any, _record: Any) -> None:
    """A held connection's commits are not synced to disk one by one: SQLite's default (FULL)
    syncs the WAL at every commit, one event's cost (~1 ms, more on a slow disk: ~0.3 s of
    teachcomputing's next day for ~300 events). With NORMAL the WAL is synced at checkpoints;
    in WAL mode that survives any crash of a process, and a power loss can lose the last
    commits, never the database (SQLite's documentation). Dagster's own storage reopens every
    database per event, so it paid a checkpoint's sync for each instead."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


class _HeldEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, its index and recent run databases held open.

    Relies on: `run_connection` and `index_connection` (SqlEventLogStorage's abstract methods)
    are how every read and write reaches a database, `has_table` how it asks for the index's
    tables; the parent's own connect creates a database's tables the first time this storage
    opens it (so each database is first opened through it); `wipe` deletes the run databases'
    files; a watcher of a run (`watch`) learns of its new events from its file's modification."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # Before the parent's __init__: it reads and writes a new home's index through them.
        self._held = _HeldEngines(
            1 + HELD_RUN_DATABASES, {"timeout": EVENT_LOG_BUSY_TIMEOUT_SECONDS}
        )
        self._opened: set[str] = set()
        # One transaction at a time in this process, as the parent's connect has it.
        self._one_at_a_time = threading.Lock()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _held_connection(self, shard: str) -> Iterator[sa.Connection]:
        with self._one_at_a_time:
            if shard not in self._opened:
                with super().run_connection(shard) as connection:  # creates its tables
                    yield connection
                self._opened.add(shard)
                if shard != INDEX_SHARD_NAME:  # a close that another's connection outlives
                    _tell_watchers(self.path_for_shard(shard))  # does not checkpoint either
                return
            engine = self._held.engine(self.conn_string_for_shard(shard))
            with engine.connect() as connection:
                before = _changes(connection)
                with connection.begin():
                    yield connection
                wrote = _changes(connection) != before
            if wrote and shard != INDEX_SHARD_NAME:
                _tell_watchers(self.path_for_shard(shard))

    def run_connection(self, run_id: str | None = None) -> Any:
        return self._held_connection(run_id)  # type: ignore[arg-type]  # the parent's signature

    def index_connection(self) -> Any:
        return self._held_connection(INDEX_SHARD_NAME)

    def has_table(self, table_name: str) -> bool:
        # Asked of the index for every asset event stored, inside its transaction: on a held
        # connection (the second the pool keeps), not a new engine's.
        engine = self._held.engine(self.conn_string_for_shard(INDEX_SHARD_NAME))
        with engine.connect() as connection:
            return bool(engine.dialect.has_table(connection, table_name))

    def wipe(self) -> None:
        # Its run databases' files are deleted: a connection held to one would write to no file.
        with self._one_at_a_time:
            self._held.close()
            self._opened.clear()
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._held.close()


def _changes(connection: sa.Connection) -> int:
    """Rows this SQLite connection has inserted, updated or deleted since it was opened."""
    return connection.connection.dbapi_connection.total_changes  # type: ignore[union-attr]


def _tell_watchers(database: str) -> None:
    """Mark a run's database changed for whoever watches it: the webserver streams a run's
    events to its page by watching the run's database file (Dagster's
    SqliteEventLogStorageWatchdog, on the file's modification). On a connection held open a
    commit writes the WAL alone, and the database file changes only at a checkpoint (before, the
    last connection's close after every event did one). A new modification time, set after the
    commit, is that signal (inotify reports it as a modification), without the checkpoint's
    sync to disk. Set after a write, and after this process's first open of the database (made
    through Dagster's own connection, often the process's one write: the daemon's RUN_STARTING),
    never after a read on a held connection, or the watcher's own reads would signal it again."""
    os.utime(database)


class _HeldRunStorage(SqliteRunStorage):
    """Relies on: `connect` (SqlRunStorage's abstract method) is how it reaches its database."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(conn_string, inst_data)
        self._held = _HeldEngines(1)
        self._url = conn_string

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self._held.transaction(self._url) as connection:
            yield connection

    def dispose(self) -> None:
        super().dispose()
        self._held.close()


class HeldSqliteStorage(DagsterSqliteStorage):
    """`DagsterSqliteStorage` (the same files under `base_dir`) whose run and event log storages
    hold their databases open. Relies on: the instance is given the storages this returns
    (create_instance_from_ref), and disposes the run and event log storages with itself."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # Not the parent's __init__: it would open (and check the tables of) unheld ones.
        self.base_dir = base_dir
        self._held_inst_data = inst_data
        self._held_runs = _HeldRunStorage.from_local(_runs_directory(base_dir))
        self._held_events = _HeldEventLogStorage(_event_logs_directory(base_dir))
        # Dagster's own: its instance never disposes a schedule storage (a connection held
        # would outlive it), and ticks write a few rows a minute, not hundreds a run.
        self._held_schedules = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._held_inst_data

    @property
    def run_storage(self) -> SqliteRunStorage:
        return self._held_runs

    @property
    def event_log_storage(self) -> SqliteEventLogStorage:
        return self._held_events

    @property
    def schedule_storage(self) -> SqliteScheduleStorage:
        return self._held_schedules

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> HeldSqliteStorage:
        return cls.from_local(inst_data=inst_data, base_dir=config_value["base_dir"])


class HeldSqliteInstance(dg.DagsterInstance):
    """Dagster's instance, its default storage `HeldSqliteStorage` under its home.

    Relies on: an `instance_class` of dagster.yaml gives the defaults of every key the file leaves
    out (`config_defaults(base_dir)`, with the instance's home), and takes its own keys
    (`config_schema`: none). A `storage:` key in the file still wins (PostgreSQL, say)."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def config_defaults(cls, base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(
            HeldSqliteStorage.__module__,
            HeldSqliteStorage.__name__,
            yaml.dump({"base_dir": base_dir}, default_flow_style=False),
        )
        return defaults
