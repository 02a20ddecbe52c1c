"""The nightly links digest: one frame through SQLAlchemy's rows against chunks from the driver.

    python -m benchmarks.links_digest --users 1500000
    python -m benchmarks.links_digest --users 1500000 --database postgresql://...  (a server:
    the benchmark makes a database of its own there)

Every night, before any course is skipped, `change_tracking.refresh_linking_state` sums a hash
of every stored link (membership, user) to learn whether the platform changed one: ~1M links on
`large`. It read them as one frame through `sync_store.read_frame` (a SQLAlchemy Row per row);
now `_stored_links_hash` sums the hashes of `sync_store.driver_frames`' chunks. A platform
database is seeded as in `linking_state_memory` (a third of the users linked), then both ways
run in alternating rounds in this one process; the digests are compared every round. Printed:
each way's median seconds and the ratio new / old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from benchmarks.harness import fresh_database
from benchmarks.linking_state_memory import seed
from sync_assets.platform import change_tracking, sync_store
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.tables import future_learn_memberships


def one_frame(connection: sa.Connection) -> int:
    """The way before: every link as one frame through SQLAlchemy's rows, then hashed."""
    table = future_learn_memberships
    links = sync_store.read_frame(
        connection,
        sa.select(table.c.membership_uuid, table.c.user_id).where(table.c.user_id.is_not(None)),
        {"membership_uuid": pl.String, "user_id": pl.String},
    )
    return change_tracking.links_hash(links)


WAYS = {"one frame": one_frame, "driver chunks": change_tracking._stored_links_hash}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_500_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", default="sqlite")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = fresh_database(args.database, Path(folder))  # on PostgreSQL a new database
        seed(url, args.users)
        engine = create_platform_engine(url)
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        digests: set[int] = set()
        for number in range(args.rounds):
            for way in WAYS if number % 2 == 0 else list(WAYS)[::-1]:
                with engine.connect() as connection:
                    started = time.perf_counter()
                    digests.add(WAYS[way](connection))
                    seconds[way].append(time.perf_counter() - started)
        with engine.connect() as connection:
            links = connection.execute(
                sa.select(sa.func.count()).where(future_learn_memberships.c.user_id.is_not(None))
            ).scalar_one()
        engine.dispose()
    if len(digests) != 1:
        raise RuntimeError("the two ways disagree on the digest")
    medians = {way: statistics.median(each) for way, each in seconds.items()}
    result = {
        "database": "sqlite" if args.database == "sqlite" else "postgresql",
        "links": links,
        "rounds": args.rounds,
        "median_seconds": {way: round(value, 3) for way, value in medians.items()},
        "each_round": {way: [round(v, 3) for v in each] for way, each in seconds.items()},
        "ratio_driver_chunks_over_one_frame": round(
            medians["driver chunks"] / medians["one frame"], 3
        ),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
