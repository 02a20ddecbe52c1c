"""Reads by key, keys bound as one JSON parameter (`sync_store.listed`) against one parameter each.

    python -m benchmarks.keyed_reads --users 150000
    python -m benchmarks.keyed_reads --users 150000 --database postgresql://...

A next day reads every membership of every changed course (`membership_states`) and the users
their external ids may name (`users_matching`), in chunks of `KEY_CHUNK` keys. Bound one
parameter per key (an expanding IN), SQLAlchemy spent more on the parameters than the database
on the read. A platform database is seeded as in `linking_state_memory` (a third of the users
linked to a membership); then, in alternating rounds in this one process, both reads run over
every membership with the keys bound as one JSON text (as built) and one parameter each (the
baseline, by handing the reads a plain list). The ratios are within one script; the rows read
are compared so that a faster read that reads something else is seen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.linking_state_memory import seed
from sync_assets.platform import change_tracking, sync_store
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.tables import future_learn_memberships

AS_BUILT = sync_store.listed


def one_parameter_each(_connection: Any, values: Sequence[str]) -> list[str]:
    """The baseline: `column.in_(a list)`, SQLAlchemy's expanding IN."""
    return list(values)


def read_both(connection: Any, uuids: list[str]) -> tuple[float, int]:
    """Seconds for both reads, and the rows they read."""
    started = time.perf_counter()
    states = sync_store.membership_states(connection, uuids)
    links = sync_store.links_with_external_ids(states)
    users = sync_store.users_matching(connection, links["external_learner_id"].to_list())
    return time.perf_counter() - started, states.height + users.height


def fetched_with_emails(url: str) -> None:
    """Each seeded membership fetched, its external id its user's email (as most are)."""
    engine = create_platform_engine(url)
    table, users = future_learn_memberships, sa.table("users", sa.column("id"), sa.column("email"))
    email = sa.select(users.c.email).where(users.c.id == table.c.user_id).scalar_subquery()
    with engine.begin() as connection:
        connection.execute(
            sa.update(table).values(external_learner_id=email, fetched_at=sa.func.now())
        )
    engine.dispose()


def rounds(url: str, count: int) -> dict[str, Any]:
    engine = create_platform_engine(url)
    change_tracking.refresh_linking_state(engine)  # the email keys users_matching reads
    seconds: dict[str, list[float]] = {"json": [], "expanding": []}
    rows: dict[str, set[int]] = {"json": set(), "expanding": set()}
    ways: dict[str, Callable[..., Any]] = {"json": AS_BUILT, "expanding": one_parameter_each}
    with engine.connect() as connection:
        table = future_learn_memberships
        uuids = list(connection.execute(sa.select(table.c.membership_uuid)).scalars())
        for _ in range(count):
            for name, way in ways.items():
                sync_store.listed = way  # type: ignore[assignment]
                try:
                    took, read = read_both(connection, uuids)
                finally:
                    sync_store.listed = AS_BUILT
                seconds[name].append(took)
                rows[name].add(read)
    engine.dispose()
    ratios = [j / e for j, e in zip(seconds["json"], seconds["expanding"], strict=True)]
    return {
        "memberships": len(uuids),
        "rows_read": {name: sorted(found) for name, found in rows.items()},
        "seconds_json": [round(s, 3) for s in seconds["json"]],
        "seconds_expanding": [round(s, 3) for s in seconds["expanding"]],
        "ratio_json_to_expanding": sorted(round(r, 2) for r in ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=150_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", help="a platform database URL (default: a new SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database or f"sqlite:///{Path(folder) / 'platform.sqlite3'}"
        seed(url, args.users)
        fetched_with_emails(url)
        print(json.dumps({"users": args.users} | rounds(url, args.rounds)))


if __name__ == "__main__":
    main()
