"""Dagster's PostgreSQL storage with its connections held open, for every process of a deployment.

dagster-postgres opens a new connection for each storage call outside the webserver (SQLAlchemy's
NullPool): each event a run stores starts and ends a PostgreSQL backend, and a sync run of 245
courses stores ~2,000 events. `PooledPostgresStorage` is that storage with the pool
dagster-webserver gives itself (`optimize_for_webserver`): each of its three storages holds one
connection open, opens more only while several threads need one at once, and closes them when
its instance is disposed. deploy/dagster.yaml names it; the instance ref a run's process starts
from names it too, so run workers, the daemon, the code server and `sync-assets` pool alike.
(`benchmarks/partition_events.py --pooled`: a run of 245 partitions × 4 assets.)
"""

from __future__ import annotations

from typing import Any

from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from sync_assets.runs.dagster_internals import close_storage_connections

# A connection older than this is replaced when next taken (the webserver's default).
POOL_RECYCLE_SECONDS = 3600
# Connections opened beyond the one held while more threads than one use a storage at once (the
# daemon's, the webserver's); each is closed when returned.
MAX_OVERFLOW = 20
# PostgreSQL's default: a run's writes are not the webserver's requests.
NO_STATEMENT_TIMEOUT = 0


def _pooled(storage: Any) -> None:
    storage.optimize_for_webserver(
        statement_timeout=NO_STATEMENT_TIMEOUT,
        pool_recycle=POOL_RECYCLE_SECONDS,
        max_overflow=MAX_OVERFLOW,
    )


class _HeldConnections:
    """A dagster-postgres storage pooled when made, its pool closed when disposed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _pooled(self)

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        close_storage_connections(self)  # the connection held: NullPool held none


class _PooledRunStorage(_HeldConnections, PostgresRunStorage):
    pass


class _PooledEventLogStorage(_HeldConnections, PostgresEventLogStorage):
    pass


class _PooledScheduleStorage(_HeldConnections, PostgresScheduleStorage):
    pass


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose run, event log and schedule storages hold a connection."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: Any = None,  # Dagster's ConfigurableClassData
        token_provider: Any = None,
    ) -> None:
        # Not the parent's __init__: it would create (and check the tables of) unpooled ones.
        # Its public properties are overridden below, so none of its attributes is relied on.
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._pooled_inst_data = inst_data
        arguments = (postgres_url, should_autocreate_tables)
        self._pooled_runs = _PooledRunStorage(*arguments, token_provider=token_provider)
        self._pooled_events = _PooledEventLogStorage(*arguments, token_provider=token_provider)
        self._pooled_schedules = _PooledScheduleStorage(*arguments, token_provider=token_provider)

    @property
    def inst_data(self) -> Any:
        return self._pooled_inst_data

    @property
    def run_storage(self) -> PostgresRunStorage:
        return self._pooled_runs

    @property
    def event_log_storage(self) -> PostgresEventLogStorage:
        return self._pooled_events

    @property
    def schedule_storage(self) -> PostgresScheduleStorage:
        return self._pooled_schedules

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: Any, config_value: Any
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
