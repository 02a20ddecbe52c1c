"""Peak memory of `refresh_linking_state` on a first sync: every user's email key to compute.

    python -m benchmarks.linking_state_memory --users 920000
    python -m benchmarks.linking_state_memory --users 920000 --database postgresql://...

On a first sync of `large` (920k users) this step alone peaked at 632 MiB (analysis.md, issue 33):
every user is stale, so it reads every user and writes every key. Here a platform database is
seeded with `--users` users (ids and emails only; a third linked memberships) and links, then a
fresh process runs the step once and reports its peak resident memory (VmHWM) before and after
it; the step's share is the difference. Run it from two checkouts back to back and compare the
shares as a ratio (the machine's noise is in both). Nothing is asserted; the keys written are
counted so a run that wrote nothing is seen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.step_memory import peak_mib


def seed(url: str, users: int) -> None:
    """`users` users, one in three linked to a membership, one in fifty forgotten."""
    import sqlalchemy as sa

    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.migrate import upgrade
    from sync_assets.platform.tables import future_learn_memberships
    from sync_assets.platform.tables import users as users_table

    engine = create_platform_engine(url)
    upgrade(engine)
    batch = 50_000
    with engine.begin() as connection:
        for start in range(0, users, batch):
            ids = range(start, min(start + batch, users))
            connection.execute(
                sa.insert(users_table),
                [
                    {
                        "id": f"u{i:08d}",
                        "email": f"Learner.{i}@Example.org",
                        "forgotten": i % 50 == 0,
                    }
                    for i in ids
                ],
            )
            connection.execute(
                sa.insert(future_learn_memberships),
                [
                    {"membership_uuid": f"m{i:08d}", "user_id": f"u{i:08d}"}
                    for i in ids
                    if i % 3 == 0 and i % 50 != 0
                ],
            )
    engine.dispose()


def child(url: str) -> dict[str, Any]:
    """The step once, in this fresh process."""
    import sqlalchemy as sa

    from sync_assets.platform.change_tracking import refresh_linking_state
    from sync_assets.platform.database import create_platform_engine

    engine = create_platform_engine(url)
    before = peak_mib()
    started = time.perf_counter()
    generation = refresh_linking_state(engine)
    seconds = time.perf_counter() - started
    after = peak_mib()
    with engine.connect() as connection:
        keys = connection.execute(sa.text("SELECT count(*) FROM user_email_keys")).scalar_one()
    engine.dispose()
    return {
        "generation": generation,
        "keys_written": keys,
        "seconds": round(seconds, 2),
        "peak_before_mib": round(before, 1),
        "peak_after_mib": round(after, 1),
        "step_mib": round(after - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=920_000)
    parser.add_argument("--database", help="a platform database URL (default: a new SQLite file)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory() as folder:
        url = args.database or f"sqlite:///{Path(folder) / 'platform.sqlite3'}"
        seed(url, args.users)
        measured = subprocess.run(
            [sys.executable, "-m", "benchmarks.linking_state_memory", "--child", url],
            capture_output=True,
            text=True,
            check=True,
        )
        print(json.dumps({"users": args.users} | json.loads(measured.stdout.splitlines()[-1])))


if __name__ == "__main__":
    main()
