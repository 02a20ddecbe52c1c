"""Linking's candidate users, a chunk of keys at a time: one OR of two IN lists against two
keyed reads joined to the chunk's keys.

    python -m benchmarks.users_matching --users 900000 --database postgresql://...  (a server:
    the benchmark makes a database of its own there)

`sync_store.users_matching` reads the users an external id may name (by id, or by caseless
email through `user_email_keys`), 5,000 keys a chunk: on `large`'s first sync, ~1M keys right
after every email key was written. Until ecf26a4 each chunk was one `SELECT … WHERE id IN (…) OR
id IN (SELECT user_id FROM user_email_keys WHERE email_key IN (…))`; PostgreSQL runs an OR of
IN lists as a scan of every user tested against both (a SubPlan each), and with no statistics
on the keys just written it materialises the email matches and re-reads them for every user:
on `large` (920k users) a 50,000-row fetch of that statement took ~2 min. Now the chunk is
joined to its keys in two reads (UNION ALL), and the keys table is analyzed once 10,000 or more
keys are written.

Users are seeded as in `linking_state_memory` and their keys written without statistics (as
before ecf26a4), then every way reads the same chunks (a third ids, two thirds emails, in any
case) in alternating rounds, first as written, then after ANALYZE; a statement is given at
most `--timeout` seconds. Printed: seconds a chunk for each way and state, and the users found
(equal across ways, once read twice in a chunk are dropped as the caller drops them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from benchmarks.harness import fresh_database
from benchmarks.linking_state_memory import seed
from sync_assets.platform import sync_store
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.tables import user_email_keys, users

CHUNK = 5_000
COLUMNS = (users.c.id, users.c.email, users.c.forgotten)


def one_or(connection: sa.Connection, chunk: Sequence[str]) -> sa.Select:
    """The statement before ecf26a4."""
    keys = user_email_keys
    caseless = sorted({sync_store.email_key(value) for value in chunk})
    by_email = sa.select(keys.c.user_id).where(
        keys.c.email_key.in_(sync_store.listed(connection, caseless))
    )
    return sa.select(*COLUMNS).where(
        sa.or_(users.c.id.in_(sync_store.listed(connection, chunk)), users.c.id.in_(by_email))
    )


def as_built(connection: sa.Connection, chunk: Sequence[str]) -> pl.DataFrame:
    return sync_store.users_matching(connection, pl.Series(chunk, dtype=pl.String))


def before(connection: sa.Connection, chunk: Sequence[str]) -> pl.DataFrame:
    found = sync_store.read_frame(connection, one_or(connection, chunk), sync_store.USERS_SCHEMA)
    return found.filter(pl.col("id").is_first_distinct())


WAYS: dict[str, Callable[[sa.Connection, Sequence[str]], pl.DataFrame]] = {
    "one OR (before)": before,
    "joined keyed reads (as built)": as_built,
}


def write_keys_without_statistics(url: str) -> int:
    """Every user's key, as refresh_email_keys writes them but without its ANALYZE."""
    engine = create_platform_engine(url)
    with engine.begin() as connection:
        stale = sync_store.stale_email_keys(connection)
        connection.execute(sa.insert(user_email_keys), stale.to_dicts())
    engine.dispose()
    return stale.height


def chunks_of_keys(users_count: int, chunks: int) -> list[list[str]]:
    """`chunks` chunks of external ids: a third user ids, the rest emails in other cases."""
    step = max(1, users_count // (chunks * CHUNK))
    picked = range(0, users_count, step)
    values = [
        f"u{i:08d}" if n % 3 == 0 else f"LEARNER.{i}@example.ORG" for n, i in enumerate(picked)
    ]
    return [sorted(values[s : s + CHUNK]) for s in range(0, chunks * CHUNK, CHUNK)]


def timed(
    engine: sa.Engine, way: str, chunks: list[list[str]], timeout: float, postgres: bool
) -> tuple[float | None, int]:
    found = 0
    started = time.perf_counter()
    with engine.connect() as connection:
        if postgres:
            connection.exec_driver_sql(f"SET statement_timeout = {int(timeout * 1000)}")
        try:
            for chunk in chunks:
                found += WAYS[way](connection, chunk).height
        except OperationalError:
            return None, found  # past the timeout
    return (time.perf_counter() - started) / len(chunks), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--database", default="sqlite")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    postgres = args.database != "sqlite"
    result: dict = {"database": "postgresql" if postgres else "sqlite", "users": args.users}
    with tempfile.TemporaryDirectory() as folder:
        url = fresh_database(args.database, Path(folder))  # on PostgreSQL a new database
        seed(url, args.users)
        result["keys"] = write_keys_without_statistics(url)
        chunks = chunks_of_keys(args.users, args.chunks)
        engine = create_platform_engine(url)
        for state in ("keys just written", "keys analyzed"):
            if state == "keys analyzed":
                with engine.begin() as connection:
                    connection.exec_driver_sql("ANALYZE")
            seconds: dict[str, list[float | None]] = {way: [] for way in WAYS}
            found: dict[str, set[int]] = {way: set() for way in WAYS}
            for number in range(args.rounds):
                for way in WAYS if number % 2 == 0 else list(WAYS)[::-1]:
                    spent, rows = timed(engine, way, chunks, args.timeout, postgres)
                    seconds[way].append(spent)
                    if spent is not None:
                        found[way].add(rows)
            result[state] = {
                way: {
                    "median_seconds_a_chunk": (
                        None if None in each else round(statistics.median(each), 4)  # type: ignore[type-var]
                    ),
                    "each_round": [None if s is None else round(s, 4) for s in each],
                    "users_found": sorted(found[way]),
                }
                for way, each in seconds.items()
            }
        engine.dispose()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
