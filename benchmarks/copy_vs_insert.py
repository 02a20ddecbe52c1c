"""What COPY saves a first sync's writes on PostgreSQL, against multi-row INSERT … VALUES.

    python -m benchmarks.copy_vs_insert --rows 100000 [--url postgresql://postgres@127.0.0.1:5432/test]

One course's first-sync batch of `--rows` learners (a fetched and linked membership, a new
completed achievement with its transition and completion event, a programme enrolment each:
5 rows a learner) is written by `sync_store.write_course_sync` through each path, in the same
process, on the same database, in a transaction rolled back afterwards, best of `--repeats`.
The paths differ only in `sync_store._copies`, the switch the sync itself uses. Works in a
schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa

from sync_assets.platform import sync_store
from sync_assets.platform.database import create_platform_engine, parse_database_url
from sync_assets.platform.demo_catalogue import seed_demo_catalogue
from sync_assets.platform.migrate import upgrade
from sync_assets.platform.tables import users

ACTIVITY = "programming-101-an-introduction-to-python-for-educators"
PROGRAMME = "cs-accelerator"


def first_sync_batch(rows: int) -> sync_store.CourseSyncBatch:
    ids = [f"bench-user-{i}" for i in range(rows)]
    when = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    cause = json.dumps({"source": "report", "progress": 100})
    return sync_store.CourseSyncBatch(
        memberships=pl.DataFrame(
            {
                "membership_uuid": [f"bench-membership-{i}" for i in range(rows)],
                "user_id": ids,
                "external_learner_id": ids,
                "learner_uuid": [f"bench-learner-{i}" for i in range(rows)],
                "fetched_at": [when] * rows,
                "linked_at": [when] * rows,
            }
        ),
        achievement_changes=pl.DataFrame(
            {
                "user_id": ids,
                "activity_id": [ACTIVITY] * rows,
                "programme_id": [PROGRAMME] * rows,
                "progress": [100] * rows,
                "state": ["complete"] * rows,
                "completed_at": [when] * rows,
                "previous_state": [None] * rows,
                "previous_progress": [None] * rows,
                "cause": [cause] * rows,
            },
            schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA,
        ),
        programme_enrolments=pl.DataFrame(
            {"user_id": ids, "programme_id": [PROGRAMME] * rows, "auto_enrolled": [True] * rows}
        ),
    )


def time_write(engine: sa.Engine, batch: sync_store.CourseSyncBatch, copies: bool) -> float:
    sync_store._copies = lambda _connection: copies  # the sync's own switch between the paths
    with engine.connect() as connection, connection.begin() as transaction:
        started = time.perf_counter()
        applied = sync_store.write_course_sync(connection, batch, dagster_run_id="bench")
        elapsed = time.perf_counter() - started
        transaction.rollback()
    assert applied.created == applied.completion_events == batch.memberships.height
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    admin_url = parse_database_url(args.url)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = admin_url.update_query_dict({"options": f"-csearch_path={schema}"})
    engine = create_platform_engine(url.render_as_string(hide_password=False))
    original = sync_store._copies
    try:
        upgrade(engine)
        batch = first_sync_batch(args.rows)
        with engine.begin() as connection:
            seed_demo_catalogue(connection)
            people = [
                {"id": f"bench-user-{i}", "email": f"u{i}@example.org", "forgotten": False}
                for i in range(args.rows)
            ]
            connection.execute(sa.insert(users), people)
        timings = {"insert": [], "copy": []}
        for _ in range(args.repeats):
            timings["insert"].append(time_write(engine, batch, copies=False))
            timings["copy"].append(time_write(engine, batch, copies=True))
        rows_written = 5 * args.rows
        best = {path: min(seconds) for path, seconds in timings.items()}
        for path, seconds in best.items():
            print(f"{path:>6}: {seconds:6.2f} s  {rows_written / seconds:9,.0f} rows/s")
        print(f" ratio: COPY takes {best['copy'] / best['insert']:.2f} of INSERT's time")
    finally:
        sync_store._copies = original
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
