"""Event-log bytes per night, before and after retention (issue 32), and after a simulated year.

    python -m benchmarks.event_log --workload teachcomputing --courses-per-run 3 --nights 3 \
        --before 149ea76 --json benchmarks/results/event_log/teachcomputing-sqlite.json

Two variants, each with its own simulator process (the same workload and seed, so the same
days), platform database and Dagster home (SQLite, the embedded default):

- `before`: the code at `--before` (a commit without this work), run from a
  `git archive` of it: a preview table and a column schema on every computed partition's event,
  and `course_runs`' table of every course partition in every chunk run;
- `after`: this checkout with its defaults (no previews, the table once a night).

Each runs `sync-assets sync` as the nightly schedule does (SYNC_ASSETS_COURSES_PER_RUN chunks,
then the certificate work): night 1 is the first sync, every later night comes after the
simulator's `advance_day` (about 5% of enrolments change; every course is recomputed). After
each night the event log is measured: the bytes of the `event` column of every run's shard
(what PostgreSQL's `event_logs` would hold), the same in SQLite's index shard (asset events are
written twice there), and the files' sizes. After the last night, `sync-assets prune
--older-than 0` is run in `after`: what it keeps is what no prune can delete (the runs holding a
partition's latest materialisation), measured.

The year is computed from these measurements, not run: `before` grows by its per-night bytes
for 365 nights; `after` holds at most the nights within the retention (90 days) plus the week
until the next Sunday prune (97 nights), plus what a prune keeps. Ratios are after / before
from the same script on the same machine. Nothing here asserts sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tarfile
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BIN,
    ROOT,
    SimulatorProcess,
    fresh_database,
    git_commit,
    seed_platform,
    sync_env,
)
from sync_assets.simulator.datasets import generate

RETENTION_DAYS = 90
NIGHTS_HELD = RETENTION_DAYS + 7  # just before a Sunday prune: 90 days and a week's nights


def event_log_bytes(dagster_home: Path) -> dict[str, int]:
    """The SQLite event log's bytes: event rows of the run shards, of the index shard, files."""
    folder = dagster_home / "history" / "runs"
    figures = {"run_shard_event_bytes": 0, "index_event_bytes": 0, "events": 0, "file_bytes": 0}
    for path in sorted(folder.glob("*.db")):
        figures["file_bytes"] += path.stat().st_size
        with closing(sqlite3.connect(path)) as connection:
            count, size = connection.execute(
                "SELECT count(*), coalesce(sum(length(event)), 0) FROM event_logs"
            ).fetchone()
        if path.name == "index.db":
            figures["index_event_bytes"] += size
        else:
            figures["run_shard_event_bytes"] += size
            figures["events"] += count
    return figures


def before_tree(commit: str, into: Path) -> Path:
    """The package as it was at `commit`, to run with PYTHONPATH (before the editable install)."""
    archive = subprocess.run(
        ["git", "archive", commit, "sync_assets", "dagster.yaml", "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def sync(env: dict[str, str], *options: str) -> None:
    done = subprocess.run(
        [str(BIN / "sync-assets"), *options], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"sync-assets {' '.join(options)} failed: {done.stderr[-2000:]}")


def run_variant(
    name: str, workload: str, nights: int, per_run: int, before: Path | None
) -> dict[str, Any]:
    dataset = generate(workload)
    simulator = SimulatorProcess(workload, 0)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-eventlog-{name}-"))
    try:
        url = fresh_database("sqlite", workdir)
        seed_platform(url, dataset)
        env = {
            **sync_env(simulator, url, workdir, concurrency=16),
            "SYNC_ASSETS_COURSES_PER_RUN": str(per_run),
        }
        if before is not None:
            env["PYTHONPATH"] = str(before)
        home = Path(env["DAGSTER_HOME"])
        measured = []
        previous = dict.fromkeys(
            ("run_shard_event_bytes", "index_event_bytes", "events", "file_bytes"), 0
        )
        for night in range(1, nights + 1):
            if night > 1:
                simulator.advance_day()
            sync(env, "sync")
            total = event_log_bytes(home)
            measured.append(
                {
                    "night": night,
                    **{f"night_{k}": total[k] - previous[k] for k in previous},
                    **{f"total_{k}": v for k, v in total.items()},
                }
            )
            previous = total
            print(name, measured[-1], flush=True)
        result: dict[str, Any] = {"variant": name, "nights": measured}
        if before is None:
            sync(env, "prune", "--older-than", "0")
            result["after_prune_older_than_0"] = event_log_bytes(home)
            print(name, "after prune", result["after_prune_older_than_0"], flush=True)
        return result
    finally:
        simulator.stop()


def year(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """365 nights, computed from the measured later nights (night 2 on) and the prune's residue."""
    out: dict[str, Any] = {}
    for name, variant in variants.items():
        later = [night["night_run_shard_event_bytes"] for night in variant["nights"][1:]]
        per_night = sum(later) / len(later)
        first = variant["nights"][0]["night_run_shard_event_bytes"]
        if name == "before":
            size = first + 364 * per_night
        else:
            kept = variant["after_prune_older_than_0"]["run_shard_event_bytes"]
            size = NIGHTS_HELD * per_night + kept
        out[name] = {"per_later_night_bytes": round(per_night), "year_bytes": round(size)}
    out["ratio_per_night_after_over_before"] = round(
        out["after"]["per_later_night_bytes"] / out["before"]["per_later_night_bytes"], 3
    )
    out["ratio_year_after_over_before"] = round(
        out["after"]["year_bytes"] / out["before"]["year_bytes"], 4
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--courses-per-run", type=int, default=3)
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument(
        "--before",
        required=True,
        help="the commit measured as `before`: one without issue 32's retention (149ea76)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = {}
    with tempfile.TemporaryDirectory(prefix="bench-eventlog-before-code-") as code:
        for name, tree in (("before", before_tree(args.before, Path(code))), ("after", None)):
            variants[name] = run_variant(
                name, args.workload, args.nights, args.courses_per_run, tree
            )
    result = {
        "workload": args.workload,
        "courses_per_run": args.courses_per_run,
        "latency_ms": 0,
        "database": "sqlite",
        "before_commit": args.before,
        "after_commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "variants": variants,
        "year": year(variants),
    }
    print(json.dumps(result["year"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
