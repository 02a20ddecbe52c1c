"""The code location loads, and the instance configs we ship run real materialisations."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.runs import SqliteRunStorage
from dagster_postgres import PostgresRunStorage
from sqlalchemy.engine import URL

from sync_assets.definitions import EVENT_BATCH_SIZE, defs
from sync_assets.defs.resources import PlatformDatabase
from sync_assets.defs.sync.course_step import add_partition_metadata
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.migrate import upgrade
from sync_assets.runs.held_sqlite import HELD_RUN_DATABASES, HeldSqliteInstance
from sync_assets.runs.pooled_storage import PooledPostgresStorage

PROJECT = Path(__file__).resolve().parents[2]


@dg.asset
def known_course_count(platform_database: PlatformDatabase) -> dg.MaterializeResult:
    with platform_database.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM activities")).scalar_one()
    return dg.MaterializeResult(metadata={"activities": count})


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert "platform_database" in defs.resources


def _materialise(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [known_course_count],
        instance=instance,
        resources={"platform_database": PlatformDatabase()},
    )


def assert_ticks_are_purged(instance: dg.DagsterInstance) -> None:
    """Tick history does not grow for ever: what the daemon purges, and after how many days."""
    retention = instance.get_settings("retention")
    assert retention["schedule"] == {"purge_after_days": 90}
    assert retention["sensor"] == {"purge_after_days": {"skipped": 7, "success": 90, "failure": 90}}


def test_local_instance_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    upgrade(create_platform_engine(database_url))
    monkeypatch.setenv("PLATFORM_DATABASE_URL", database_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance, HeldSqliteInstance)
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert_ticks_are_purged(instance)
        result = _materialise(instance)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("known_course_count"))
        assert event.asset_materialization.metadata["activities"].value == 0


def _production_instance_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database_url: URL
) -> Path:
    """A Dagster home with the production instance (PostgreSQL), a SQLite platform beside it."""
    platform = f"sqlite:///{tmp_path / 'platform.sqlite3'}"
    upgrade(create_platform_engine(platform))
    monkeypatch.setenv("PLATFORM_DATABASE_URL", platform)
    for name, value in {
        "DAGSTER_PG_HOST": postgres_database_url.host,
        "DAGSTER_PG_PORT": str(postgres_database_url.port or 5432),
        "DAGSTER_PG_DB": postgres_database_url.database,
        "DAGSTER_PG_USERNAME": postgres_database_url.username,
        "DAGSTER_PG_PASSWORD": postgres_database_url.password or "",
    }.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The production instance, compute logs aside (on S3 there: sync_assets_tests/deploy_tests).
    instance = yaml.safe_load((PROJECT / "deploy" / "dagster.yaml").read_text())
    del instance["compute_logs"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    return home


@pytest.mark.postgres
def test_postgres_instance_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database_url: URL
) -> None:
    home = _production_instance_home(tmp_path, monkeypatch, postgres_database_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert_ticks_are_purged(instance)
        result = _materialise(instance)
        assert result.success
    # The run and its materialisation are in PostgreSQL, not in a file under DAGSTER_HOME.
    engine = sa.create_engine(postgres_database_url)
    with engine.connect() as connection:
        run_ids = connection.execute(sa.text("SELECT run_id FROM runs")).scalars().all()
        materialised = connection.execute(
            sa.text(
                "SELECT count(*) FROM event_logs"
                " WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = :run"
            ),
            {"run": result.run_id},
        ).scalar_one()
    engine.dispose()
    assert run_ids == [result.run_id]
    assert materialised == 1


def test_resource_names_the_setting_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLATFORM_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:1/nope")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [known_course_count],
            instance=instance,
            resources={"platform_database": PlatformDatabase()},
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [
        event.event_specific_data.error
        for event in result.all_events
        if event.event_type_value == "RESOURCE_INIT_FAILURE"
    ]
    assert "PLATFORM_DATABASE_URL: cannot connect" in failure.to_string()
    assert "s3cret" not in failure.to_string()


course = dg.DynamicPartitionsDefinition(name="course")


@dg.asset(partitions_def=course)
def per_course(context) -> None:  # no annotation: Dagster refuses a string one
    # As a sync step shows each course's outcome: on its own partition.
    for key in context.partition_keys:
        add_partition_metadata(context, {"course": key}, key)


def _materialise_partitions(
    instance: dg.DagsterInstance, keys: list[str], listener: tuple[object, str, object]
) -> dg.ExecuteInProcessResult:
    """`per_course` over `keys` in one run, with a SQLAlchemy event listened to meanwhile."""
    instance.add_dynamic_partitions("course", keys)
    sa.event.listen(*listener)
    try:
        result = dg.materialize(
            [per_course],
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        )
    finally:
        sa.event.remove(*listener)
    assert result.success
    return result


@pytest.mark.postgres
def test_postgres_instance_stores_a_steps_partition_materialisations_as_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database_url: URL
) -> None:
    """A sync step over many courses writes one materialisation per course: the production
    instance stores them in one statement (DAGSTER_EVENT_BATCH_SIZE, set by the code location),
    and each course's partition still shows its own."""
    assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == str(EVENT_BATCH_SIZE)
    _production_instance_home(tmp_path, monkeypatch, postgres_database_url)
    keys = [f"course-{number}" for number in range(6)]
    inserts: list[str] = []

    def count(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EVENT_LOGS"):
            inserts.append(statement)

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        result = _materialise_partitions(
            instance, keys, (sa.engine.Engine, "before_cursor_execute", count)
        )
        events = instance.all_logs(result.run_id)
        materialised = {
            event.dagster_event.partition: event.asset_materialization.metadata["course"].value
            for event in events
            if event.dagster_event and event.dagster_event.is_step_materialization
        }
        assert materialised == {key: key for key in keys}
        assert instance.get_materialized_partitions(per_course.key) == set(keys)
    # Every other event of the run is an INSERT of its own; the six materialisations are one.
    assert len(inserts) == len(events) - len(keys) + 1


def _sessions(url: URL) -> int:
    """Connections open to the database of `url`, this one aside."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    engine.dispose()
    return count


@pytest.mark.postgres
def test_postgres_instance_holds_its_connections_open_and_closes_them_when_disposed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database_url: URL
) -> None:
    """dagster-postgres as shipped opens a connection (a PostgreSQL backend) for every event a
    run stores: the production instance holds them open instead, in every process it is handed
    to (a run's process starts from the instance ref), and closes them with the instance."""
    home = _production_instance_home(tmp_path, monkeypatch, postgres_database_url)
    keys = [f"course-{number}" for number in range(6)]
    opened: list[object] = []

    def count(*_args: object) -> None:
        opened.append(None)

    before = _sessions(postgres_database_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_ref().storage_data.class_name == PooledPostgresStorage.__name__
        result = _materialise_partitions(instance, keys, (sa.pool.Pool, "connect", count))
        events = len(instance.all_logs(result.run_id))
        assert _sessions(postgres_database_url) > before
    assert len(opened) <= 3 < events  # at most one a storage, not one an event
    assert _sessions(postgres_database_url) == before


class _Connections:
    """DBAPI connections opened and closed by any SQLAlchemy pool while listening."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    def __enter__(self) -> _Connections:
        sa.event.listen(sa.pool.Pool, "connect", self._open)
        sa.event.listen(sa.pool.Pool, "close", self._close)
        sa.event.listen(sa.pool.Pool, "close_detached", self._close)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(sa.pool.Pool, "connect", self._open)
        sa.event.remove(sa.pool.Pool, "close", self._close)
        sa.event.remove(sa.pool.Pool, "close_detached", self._close)

    def _open(self, *_: object) -> None:
        self.opened += 1

    def _close(self, *_: object) -> None:
        self.closed += 1

    @property
    def open(self) -> int:
        return self.opened - self.closed


def _embedded_home(tmp_path: Path, dagster_yaml: Path | None = PROJECT / "dagster.yaml") -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    if dagster_yaml:
        shutil.copy(dagster_yaml, home / "dagster.yaml")
    return home


def _stock_instance(home: Path) -> dg.DagsterInstance:
    """Dagster's own instance on `home`'s files (its dagster.yaml not read)."""
    config_dir = home.parent / f"{home.name}-no-config"
    for folder in (home, config_dir):
        folder.mkdir(exist_ok=True)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(config_dir)))


def _run_events(instance: dg.DagsterInstance, keys: list[str]) -> int:
    """The events of a run of `per_course` over `keys`."""

    def ignore(*_: object) -> None:
        pass

    result = _materialise_partitions(instance, keys, (sa.pool.Pool, "connect", ignore))
    return len(instance.all_logs(result.run_id))


def test_embedded_instance_holds_its_sqlite_databases_open_and_closes_them_when_disposed(
    tmp_path: Path,
) -> None:
    """Dagster's SQLite storage as shipped opens, commits and closes a database for every event a
    run stores (the close of a WAL database checkpoints it and syncs it to disk): the project's
    instance holds each database open instead, and closes them with the instance. What it wrote
    is in the files: Dagster's own storage, opened afterwards on the same home, reads it all."""
    keys = [f"course-{number}" for number in range(6)]
    with _stock_instance(tmp_path / "stock") as plain, _Connections() as stock:
        assert not isinstance(plain, HeldSqliteInstance)
        stock_events = _run_events(plain, keys)
    home = _embedded_home(tmp_path)
    with _Connections() as lifetime:
        with dg.DagsterInstance.from_config(str(home)) as instance, _Connections() as run:
            assert isinstance(instance, HeldSqliteInstance)
            events = _run_events(instance, keys)
            assert lifetime.open > 0
        assert lifetime.open == 0  # every connection closed with the instance
    assert events == stock_events
    # A run opens its new database a few times as Dagster creates its tables, then holds it (the
    # index is held already): not a database or two for every event.
    assert run.opened <= 8 < events < stock.opened
    with _stock_instance(home) as reread:
        assert not isinstance(reread, HeldSqliteInstance)
        assert reread.get_materialized_partitions(per_course.key) == set(keys)


def test_embedded_instance_syncs_its_held_databases_to_disk_at_checkpoints_not_every_event(
    tmp_path: Path,
) -> None:
    """SQLite syncs a WAL database's log at every commit by default (FULL): an event's cost on a
    slow disk. The held connections sync at checkpoints (NORMAL), which in WAL mode loses no
    commit when a process crashes."""
    connections: list[Any] = []

    def opened(dbapi_connection: Any, _record: object) -> None:
        connections.append(dbapi_connection)

    home = _embedded_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        sa.event.listen(sa.pool.Pool, "connect", opened)
        try:
            _run_events(instance, ["course-0", "course-1"])
        finally:
            sa.event.remove(sa.pool.Pool, "connect", opened)
        held = []
        for connection in connections:
            try:
                held.append(connection.execute("PRAGMA synchronous").fetchone()[0])
            except sqlite3.ProgrammingError:  # closed: Dagster's own, opened once per database
                continue
        assert held and set(held) == {1}, held  # 1: NORMAL (2: FULL, SQLite's default)
        assert instance.get_materialized_partitions(per_course.key) == {"course-0", "course-1"}


def test_embedded_instance_on_a_temporary_home_keeps_its_storage_in_that_home(
    tmp_path: Path,
) -> None:
    """Commands run without DAGSTER_HOME (`dg check defs`, `dagster dev`) read the project's
    dagster.yaml with a temporary home: the held storage goes there, as Dagster's would."""
    home = _embedded_home(tmp_path, dagster_yaml=None)
    ref = InstanceRef.from_dir(str(home), config_dir=str(PROJECT))
    with dg.DagsterInstance.from_ref(ref) as instance:
        assert isinstance(instance, HeldSqliteInstance)
        _run_events(instance, ["course-1"])
    assert (home / "history" / "runs.db").exists()
    assert (home / "history" / "runs" / "index.db").exists()
    assert not (PROJECT / "history").exists()


def _engine_event(run_id: str, message: str) -> dg.EventLogEntry:
    return dg.EventLogEntry(
        error_info=None,
        level="INFO",
        user_message=message,
        run_id=run_id,
        timestamp=0.0,
    )


def test_embedded_instance_holds_few_run_databases_however_many_runs_it_reads(
    tmp_path: Path,
) -> None:
    """Each run has its own database: a process that touches many (the webserver, the daemon)
    holds only the index and the most recent few open, not a file for every run it showed."""
    with (
        _Connections() as connections,
        dg.DagsterInstance.from_config(str(_embedded_home(tmp_path))) as instance,
    ):
        storage = instance.event_log_storage
        for number in range(3 * HELD_RUN_DATABASES):
            run_id = f"run-{number}"
            storage.store_event(_engine_event(run_id, "first"))
            storage.store_event(_engine_event(run_id, "second"))
            assert [e.user_message for e in storage.get_logs_for_run(run_id)] == [
                "first",
                "second",
            ]
        # The index, the most recent run databases, and at most one more for each of the run
        # and schedule storages.
        assert connections.open <= 1 + HELD_RUN_DATABASES + 2


def test_embedded_instance_writes_a_run_wiped_from_its_event_log_to_a_new_file(
    tmp_path: Path,
) -> None:
    """Wiping the event log deletes the run databases' files: a connection held to one would
    write where nobody reads. The next events of the run go to its new file."""
    home = _embedded_home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.store_event(_engine_event("run-1", "before"))
        storage.wipe()
        storage.store_event(_engine_event("run-1", "after"))
    with _stock_instance(home) as reread:
        logs = reread.event_log_storage.get_logs_for_run("run-1")
        assert [event.user_message for event in logs] == ["after"]


def test_embedded_instance_takes_events_from_several_threads_at_once(tmp_path: Path) -> None:
    """The webserver and the daemon call one storage from many threads: a held connection is
    shared safely (one transaction at a time, each thread's events all stored)."""
    with dg.DagsterInstance.from_config(str(_embedded_home(tmp_path))) as instance:
        storage = instance.event_log_storage

        def store(thread: int) -> None:
            for number in range(25):
                storage.store_event(_engine_event("run-1", f"{thread}-{number}"))
                instance.get_runs(limit=1)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(store, range(4)))
        logs = storage.get_logs_for_run("run-1")
    assert sorted(event.user_message for event in logs) == sorted(
        f"{thread}-{number}" for thread in range(4) for number in range(25)
    )


def test_embedded_instance_streams_each_event_of_a_run_to_a_watcher_as_it_is_stored(
    tmp_path: Path,
) -> None:
    """The webserver shows a run's events on its page as they are stored by watching the run's
    database file, and the run is stored by other processes (the daemon's RUN_STARTING, the run
    worker's events). With the database held open a commit writes its WAL only, not the database
    file: every event still reaches the watcher, from a writer holding the database and from
    one writing its first event to it."""
    home = _embedded_home(tmp_path)
    seen: list[str | None] = []
    all_seen = threading.Event()

    def watch(event: dg.EventLogEntry, _cursor: str) -> None:
        seen.append(event.user_message)
        if len(seen) == 5:
            all_seen.set()

    with (
        dg.DagsterInstance.from_config(str(home)) as webserver,
        dg.DagsterInstance.from_config(str(home)) as run_worker,
    ):
        run_worker.event_log_storage.store_event(_engine_event("run-1", "0"))
        webserver.watch_event_logs("run-1", None, watch)
        try:
            for number in range(1, 5):
                time.sleep(0.2)  # as a run stores its events, one by one
                if number < 3:
                    run_worker.event_log_storage.store_event(_engine_event("run-1", str(number)))
                    continue
                with dg.DagsterInstance.from_config(str(home)) as daemon:
                    daemon.event_log_storage.store_event(_engine_event("run-1", str(number)))
            assert all_seen.wait(timeout=15), f"the watcher saw {seen}"
        finally:
            webserver.end_watch_event_logs("run-1", watch)
    assert seen == ["0", "1", "2", "3", "4"]
