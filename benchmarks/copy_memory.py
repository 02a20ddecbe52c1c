"""The memory a PostgreSQL COPY of a million rows takes: one CSV text against a slice at a time.

    python -m benchmarks.copy_memory --database postgresql://postgres@127.0.0.1:5432/test

Linking keeps every membership it fetched before anything else can fail: on `large`'s first
sync ~1.07M rows in one `upsert_memberships`, which on PostgreSQL COPYs them into a temporary
table (`sync_store._copy_frame`). The CSV text of the whole frame was built in memory at once;
now `COPY_ROWS` rows at a time. Each variant runs in a fresh child process on a database of its
own (the same server): `one text` sets COPY_ROWS past the frame (the way before), `slices`
leaves it as built. Printed: each child's rise of its peak resident memory over the write
(VmHWM, reset once the frame is built), the write's seconds, the rows stored, and the ratio
slices / one text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

VARIANTS = {"one text": 10**12, "slices": None}


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM: Linux only")


def child(url: str, rows: int, copy_rows: int | None) -> dict[str, float]:
    """The write once, in this fresh process."""
    import polars as pl

    from sync_assets.platform import sync_store, transactions
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.migrate import upgrade

    if copy_rows is not None:
        sync_store.COPY_ROWS = copy_rows
    engine = create_platform_engine(url)
    upgrade(engine)
    now = datetime(2026, 12, 7, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "membership_uuid": [f"{i:08d}-0000-4000-8000-{i:012d}" for i in range(rows)],
            "external_learner_id": [f"learner.{i}@school{i % 97}.example.org" for i in range(rows)],
            "learner_uuid": [f"{i:08d}-1111-4000-8000-{i:012d}" for i in range(rows)],
        }
    ).with_columns(fetched_at=pl.lit(now, pl.Datetime("us", "UTC")))
    import gc

    gc.collect()
    # The peak from here: building the frame's Python texts peaked higher than the write.
    Path("/proc/self/clear_refs").write_text("5")
    before = vm_hwm_mib()
    started = time.perf_counter()
    with transactions.write_transaction(engine) as connection:
        stored = sync_store.upsert_memberships(connection, frame)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "peak_rise_mib": round(vm_hwm_mib() - before, 1),
        "seconds": round(seconds, 2),
        "rows": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a PostgreSQL server URL")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.child:
        url, copy_rows = args.child
        print(json.dumps(child(url, args.rows, None if copy_rows == "None" else int(copy_rows))))
        return
    from benchmarks.harness import fresh_database

    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for number in range(args.rounds):
            for name in VARIANTS if number % 2 == 0 else list(VARIANTS)[::-1]:
                url = fresh_database(args.database, Path(folder))
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.copy_memory",
                        "--database",
                        args.database,
                        "--rows",
                        str(args.rows),
                        "--child",
                        url,
                        str(VARIANTS[name]),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rise = {name: min(r["peak_rise_mib"] for r in runs) for name, runs in results.items()}
    summary = {
        "rows": args.rows,
        "each_round": results,
        "peak_rise_ratio_slices_over_one_text": round(rise["slices"] / rise["one text"], 3),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
