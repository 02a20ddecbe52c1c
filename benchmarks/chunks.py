"""Runs of bounded size: the first sync of a workload in one run, then in runs of N courses.

    python -m benchmarks.chunks --workload large --courses-per-run 250 --latency-ms 0

Each configuration gets a fresh platform database, Dagster home and HTTP cache, against the same
simulator process, and runs `sync-assets sync` (SYNC_ASSETS_COURSES_PER_RUN=N for the chunks).
Reported: wall time and each run's own peak memory (`run_peak_rss_mib` of its steps; the
command starts each run's count afresh, as a run in a process of its own would, so time(1)'s peak
of the command is only its last run's). Ratios are chunked / one run, from the same script on the
same machine. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    SimulatorProcess,
    dagster_instance,
    fresh_database,
    git_commit,
    run_sync,
    seed_platform,
    table_rows,
)
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate


def run_peaks(dagster_home: Path) -> list[dict[str, Any]]:
    """Each sync run's courses, wall time and peak memory, from its own event log."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    runs = []
    with dg.DagsterInstance.get() as instance:
        for run in reversed(instance.get_runs(dg.RunsFilter(job_name="futurelearn_sync"))):
            peak, courses = 0.0, set()
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None or event.event_type_value != "ASSET_MATERIALIZATION":
                    continue
                materialization = event.event_specific_data.materialization
                metadata = materialization.metadata
                if "run_peak_rss_mib" in metadata:
                    peak = max(peak, metadata["run_peak_rss_mib"].value)
                if materialization.partition:
                    courses.add(materialization.partition)
            stats = instance.get_run_stats(run.run_id)
            runs.append(
                {
                    "courses": len(courses),
                    "seconds": round((stats.end_time or 0) - (stats.start_time or 0), 1),
                    "peak_rss_mib": peak,
                }
            )
    return runs


def first_sync(
    workload: str, simulator: SimulatorProcess, per_run: int | None, concurrency: int
) -> dict[str, Any]:
    dataset = generate(workload)
    workdir = Path(tempfile.mkdtemp(prefix=f"chunks-{workload}-"))
    url = fresh_database("sqlite", workdir)
    seed_platform(url, dataset)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FL_PARTNERS_", "SYNC_"))},
        "FL_PARTNERS_URL": simulator.url,
        "FL_PARTNERS_CONSUMER_KEY": SIMULATOR_CONSUMER_KEY,
        "FL_PARTNERS_CONSUMER_SECRET": SIMULATOR_CONSUMER_SECRET,
        "FL_PARTNERS_CONCURRENCY": str(concurrency),
        "PLATFORM_DATABASE_URL": url,
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        **dagster_instance(workdir / "dagster_home", "sqlite"),
        "SYNC_ASSETS_DATA_DIR": str(workdir / "data"),
    }
    if per_run:
        env["SYNC_ASSETS_COURSES_PER_RUN"] = str(per_run)
    simulator.reset()
    wall, _, code = run_sync(env, workdir)
    runs = run_peaks(workdir / "dagster_home")
    return {
        "courses_per_run": per_run,
        "exit_code": code,
        "wall_seconds": round(wall, 1),
        "rows": table_rows(url),
        "requests": sum(simulator.counts().values()),
        "runs": runs,
        "largest_run_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="large")
    parser.add_argument("--courses-per-run", type=int, default=250)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    simulator = SimulatorProcess(args.workload, args.latency_ms)
    started = time.time()
    try:
        one = first_sync(args.workload, simulator, None, args.concurrency)
        chunked = first_sync(args.workload, simulator, args.courses_per_run, args.concurrency)
    finally:
        simulator.stop()
    result = {
        "workload": args.workload,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "commit": git_commit(),
        "seconds": round(time.time() - started),
        "one_run": one,
        "chunked": chunked,
        "wall_ratio_chunked_over_one": round(chunked["wall_seconds"] / one["wall_seconds"], 3),
        "peak_ratio_largest_chunk_over_one": round(
            chunked["largest_run_peak_rss_mib"] / one["largest_run_peak_rss_mib"], 3
        ),
        "same_rows": chunked["rows"] == one["rows"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
