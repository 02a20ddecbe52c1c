"""What Dagster's event log costs a run of N course partitions, with and without event batching.

    .venv/bin/python -m benchmarks.partition_events --partitions 27 --rounds 3 \\
        [--database postgresql://postgres@127.0.0.1:5432/test]

A run of four chained assets over N dynamic partitions (the shape of a night's sync run, bodies
that do nothing), executed in this process on a fresh instance: SQLite storage under a temp home
(the embedded default), or PostgreSQL storage in a fresh database of the given server (the
production instance's storage). Each round runs it with `DAGSTER_EVENT_BATCH_SIZE` unset (one
transaction per event, as now) and set (an output's partition materialisations, and a run's
planned events, handed to the storage as one batch), in alternating order, and prints the
wall seconds of creating and executing the run, the events stored and the SQL statements sent.
The ratio (batched / unbatched) is what to read; nothing here asserts timings.

With `--pooled`, each round compares instead Dagster's storage as shipped (a new connection for
every storage call) with the project's, both batched: on PostgreSQL `PooledPostgresStorage`
(deploy/dagster.yaml's: connections held open), on SQLite `HeldSqliteInstance` (dagster.yaml's:
each database held open).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
import yaml

partitions = dg.DynamicPartitionsDefinition(name="course")


@dg.asset(partitions_def=partitions)
def enrolments(context) -> None:  # no annotation: Dagster refuses a string one
    context.add_output_metadata({"courses": len(context.partition_keys)})


@dg.asset(partitions_def=partitions, deps=[enrolments])
def linked_memberships() -> None:
    pass


@dg.asset(partitions_def=partitions, deps=[linked_memberships])
def latest_enrolments() -> None:
    pass


@dg.asset(partitions_def=partitions, deps=[latest_enrolments])
def activity_progress() -> None:
    pass


ASSETS = [enrolments, linked_memberships, latest_enrolments, activity_progress]


def sqlite_batch_prototype(storage, events) -> None:
    """What a SQLite event log could do with a batch (not shipped; `--sqlite-batch-prototype`):
    the rows `store_event` writes for each asset event, in one transaction per shard instead of
    two transactions per event. Other events are stored one by one, as Dagster does."""
    from dagster._core.events import ASSET_EVENTS

    if any(e.dagster_event_type not in ASSET_EVENTS for e in events) or (
        len({e.run_id for e in events}) != 1
    ):
        for event in events:
            storage.store_event(event)
        return
    with storage.run_connection(events[0].run_id) as conn:
        for event in events:
            conn.execute(storage.prepare_insert_event(event))
    with storage.index_transaction() as conn:
        for event in events:
            result = conn.execute(storage.prepare_insert_event(event))
            event_id = result.inserted_primary_key[0]
            storage._store_asset_event_tags(conn, [event], [event_id])
            storage._store_asset_event(conn, event, event_id)


class Statements:
    def __init__(self) -> None:
        self.count = 0
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._one)

    def _one(self, *_: object) -> None:
        self.count += 1


def _instance(home: Path, database: str | None, pooled: bool = False) -> dg.DagsterInstance:
    if database:
        admin = sa.make_url(database).set(drivername="postgresql+psycopg2")
        name = f"partition_events_{uuid.uuid4().hex[:8]}"
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        postgres = {
            "postgres_url": admin.set(
                database=name, drivername="postgresql+psycopg2"
            ).render_as_string(hide_password=False)
        }
        storage = (
            {
                "custom": {
                    "module": "sync_assets.runs.pooled_storage",
                    "class": "PooledPostgresStorage",
                    "config": postgres,
                }
            }
            if pooled
            else {"postgres": postgres}
        )
        config: dict[str, Any] = {"storage": storage}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    elif pooled:
        config = {
            "instance_class": {
                "module": "sync_assets.runs.held_sqlite",
                "class": "HeldSqliteInstance",
            }
        }
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(home))


def one_run(
    count: int, batched: bool, database: str | None, statements: Statements, pooled: bool = False
) -> dict:
    if batched:
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "1000"
    else:
        os.environ.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    with (
        tempfile.TemporaryDirectory() as home,
        _instance(Path(home), database, pooled) as instance,
    ):
        keys = [f"course-{i:05d}" for i in range(count)]
        instance.add_dynamic_partitions("course", keys)
        before = statements.count
        started = time.perf_counter()
        result = dg.materialize(
            ASSETS,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
            raise_on_error=True,
        )
        wall = time.perf_counter() - started
        sent = statements.count - before
        events = len(instance.all_logs(result.run_id))
        materialised = instance.get_materialized_partitions(dg.AssetKey("activity_progress"))
        assert materialised == set(keys), "every partition materialised"
    return {"wall": wall, "events": events, "statements": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=27)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument(
        "--sqlite-batch-prototype",
        action="store_true",
        help="SQLite: store a batch in one transaction per shard (a prototype, see above)",
    )
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="compare the project's storage (connections held open) with Dagster's, batched",
    )
    args = parser.parse_args()
    if args.pooled:
        compare_pooling(args.partitions, args.rounds, args.database)
        return
    if args.sqlite_batch_prototype:
        from dagster._core.storage.event_log import SqliteEventLogStorage

        SqliteEventLogStorage.store_event_batch = sqlite_batch_prototype  # type: ignore[method-assign]
    statements = Statements()
    one_run(3, False, args.database, statements)  # warm imports and caches
    ratios: list[float] = []
    rows: list[dict[str, Any]] = []
    for number in range(args.rounds):
        order = (False, True) if number % 2 == 0 else (True, False)
        results = {b: one_run(args.partitions, b, args.database, statements) for b in order}
        ratios.append(results[True]["wall"] / results[False]["wall"])
        rows.append(results)
        print(
            f"round {number}: unbatched {results[False]['wall']:.2f} s "
            f"({results[False]['events']} events, {results[False]['statements']} statements), "
            f"batched {results[True]['wall']:.2f} s ({results[True]['events']} events, "
            f"{results[True]['statements']} statements): {ratios[-1]:.2f}",
            flush=True,
        )
    print(f"batched / unbatched wall: median {statistics.median(ratios):.2f}")


def compare_pooling(count: int, rounds: int, database: str | None) -> None:
    statements = Statements()
    one_run(3, True, database, statements)  # warm imports and caches
    ratios: list[float] = []
    for number in range(rounds):
        order = (False, True) if number % 2 == 0 else (True, False)
        results = {p: one_run(count, True, database, statements, pooled=p) for p in order}
        ratios.append(results[True]["wall"] / results[False]["wall"])
        print(
            f"round {number}: a connection per call {results[False]['wall']:.2f} s, "
            f"held open {results[True]['wall']:.2f} s ({results[True]['events']} events each): "
            f"{ratios[-1]:.2f}",
            flush=True,
        )
    print(f"held open / a connection per call, wall: median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
