"""Runs of bounded size: the first sync of a workload in one run, then in runs of N courses.

    python -m benchmarks.chunks --workload large --courses-per-run 250 --latency-ms 0
    python -m benchmarks.chunks --workload huge --courses-per-run 150 --max-runs 3 \
        --latency-ms 20 --catalogue-figures --json benchmarks/results/huge/chunks.json

Each configuration gets a fresh platform database, Dagster home and HTTP cache, against the same
simulator process, and runs `sync-assets sync` (SYNC_ASSETS_COURSES_PER_RUN=N for the chunks).
Reported: wall time and each run's own peak memory (`run_peak_rss_mib` of its steps; the
command starts each run's count afresh, as a run in a process of its own would, so time(1)'s peak
of the command is only its last run's). Ratios are chunked / one run, from the same script on the
same machine. Nothing here asserts timings.

With --max-runs K only the first K runs of N courses are made, one process each
(benchmarks/partial_sync.py), for a workload too big to sync whole here (`huge`): each gets its
courses, enrolments, membership look-ups (measured, and what the generator says were new), wall,
phases, requests, API bound, peak RSS of the run and rows written, and the load average. With
--catalogue-figures the generator then counts what the whole catalogue would need (enrolments,
look-ups per chunk of N in course order), for the extrapolation in analysis.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    SimulatorProcess,
    fresh_database,
    git_commit,
    run_ids,
    run_metadata,
    run_sync,
    seed_platform,
    sync_env,
    table_rows,
)
from sync_assets.simulator.datasets import GeneratedDataset, generate, load
from sync_assets.simulator.streamed import StreamedDataset
from sync_assets.sync import fact_names


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
                if fact_names.RUN_PEAK_RSS in metadata:
                    peak = max(peak, metadata[fact_names.RUN_PEAK_RSS].value)
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
    env = sync_env(simulator, url, workdir, concurrency)
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


def chunk_courses(dagster_home: Path) -> dict[str, Any]:
    """The latest sync run's courses (uuid → enrolments served) and its membership look-ups."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    courses: dict[str, int] = {}
    looked_up = 0
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(job_name="futurelearn_sync"), limit=1)
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.event_type_value != "ASSET_MATERIALIZATION":
                continue
            materialization = event.event_specific_data.materialization
            metadata = {k: v.value for k, v in materialization.metadata.items()}
            name = materialization.asset_key.to_user_string()
            if name == "enrolments" and fact_names.COURSE_UUID in metadata:
                courses[metadata[fact_names.COURSE_UUID]] = metadata.get(fact_names.ROW_COUNT, 0)
            if name == "linked_memberships":
                looked_up = max(looked_up, metadata.get(fact_names.LOOKED_UP, 0))
    return {"courses": courses, "looked_up": looked_up}


def run_chunk(env: dict[str, str], workdir: Path, start: int, count: int) -> dict[str, Any]:
    """One chunk as `sync` runs it, in a process of its own; time(1) gives its peak too."""
    rss_file = workdir / "rss.txt"
    started = time.perf_counter()
    done = subprocess.run(
        [
            *("/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable),
            *("-m", "benchmarks.partial_sync", "--start", str(start), "--count", str(count)),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    lines = done.stdout.strip().splitlines()
    phases = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "process_peak_rss_mib": round(int(rss_file.read_text().split()[-1]) / 1024, 1),
        **phases,
    }


def measured_chunks(
    workload: str,
    simulator: SimulatorProcess,
    per_run: int,
    max_runs: int,
    concurrency: int,
    latency_ms: float,
    seeded: Path | None = None,
) -> dict[str, Any]:
    """The first `max_runs` runs of `per_run` courses of a first sync, each measured alone.

    `seeded`: a seeded platform database file to start from (copied), or to keep a copy of the
    one seeded here: seeding `huge`'s ten million users takes longer than a chunk, and need not
    share the chunk's measurement window.
    """
    dataset = load(workload)
    assert isinstance(dataset, GeneratedDataset)
    workdir = Path(tempfile.mkdtemp(prefix=f"chunks-{workload}-"))
    url = fresh_database("sqlite", workdir)
    started = time.perf_counter()
    platform_file = workdir / "platform.sqlite3"
    copied = seeded is not None and seeded.exists()
    if copied:
        _copy_database(seeded, platform_file)
    else:
        seed_platform(url, dataset)
        if seeded is not None:
            seeded.parent.mkdir(parents=True, exist_ok=True)
            _copy_database(platform_file, seeded)
    seed_seconds = time.perf_counter() - started
    env = sync_env(simulator, url, workdir, concurrency)
    home = workdir / "dagster_home"
    index = course_index(dataset)
    seen: set[int] = set()
    chunks = []
    for number in range(max_runs):
        rows_before = table_rows(url)
        simulator.reset()
        load_before = os.getloadavg()
        earlier_runs = run_ids(home) if home.exists() else set()
        chunk = run_chunk(env, workdir, number * per_run, per_run)
        load_after = os.getloadavg()
        counts = simulator.counts()
        requests = sum(counts.values())
        meta = run_metadata(home, earlier_runs)
        served = chunk_courses(home)
        generated = generated_figures(dataset, [index[c] for c in served["courses"]], seen)
        lookups = sum(c for (e, _), c in counts.items() if e == "organisation_membership")
        chunks.append(
            {
                "run": number + 1,
                "partition_range": [number * per_run, number * per_run + per_run],
                **chunk,
                "courses": len(served["courses"]),
                "enrolments": sum(served["courses"].values()),
                "enrolments_generated": generated["enrolments"],
                "memberships_in_chunk": generated["memberships"],
                "new_memberships_generated": generated["new_memberships"],
                "membership_lookups": lookups,
                "looked_up_metadata": served["looked_up"],
                "report_requests": sum(
                    c for (e, _), c in counts.items() if e == "course_enrolments_report"
                ),
                "requests": requests,
                "by_endpoint_and_status": {
                    f"{e} {s}": c for (e, s), c in sorted(counts.items(), key=str)
                },
                "api_bound_seconds": round(requests * latency_ms / 1000 / concurrency, 2),
                "api_seconds": round(meta["api_seconds"], 2),
                "steps_seconds": round(meta["steps_seconds"], 2),
                "rules_seconds": round(meta["rules_step"] + meta["plan_seconds"], 2),
                "write_seconds": round(meta["write_seconds"], 2),
                "run_peak_rss_mib": meta["peak_rss_mib"],
                "rows_written": table_rows(url) - rows_before,
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in load_after],
            }
        )
        print(json.dumps(chunks[-1]), flush=True)
    return {
        "courses_per_run": per_run,
        "runs_measured": max_runs,
        "seed_platform_seconds": round(seed_seconds, 1),
        "platform": f"copied from {seeded}" if copied else "seeded here",
        "chunks": chunks,
    }


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, whatever its write-ahead log still holds."""
    # sqlite3's own context manager commits but does not close: closing() does.
    with closing(sqlite3.connect(source)) as read, closing(sqlite3.connect(target)) as write:
        read.backup(write)


def course_index(dataset: GeneratedDataset) -> dict[str, int]:
    return {uuid: row for row, uuid in enumerate(dataset.courses["course_uuid"].to_list())}


def generated_figures(
    dataset: GeneratedDataset, courses: list[int], seen: set[int]
) -> dict[str, int]:
    """Enrolments and memberships of these courses, by the generator; `seen` grows with them."""
    if not isinstance(dataset, StreamedDataset):
        return {"enrolments": 0, "memberships": 0, "new_memberships": 0}
    codes = [dataset.course_arrays(course).membership_code for course in courses]
    every = np.unique(np.concatenate(codes)) if codes else np.array([], np.int64)
    new = {int(code) for code in every} - seen
    seen.update(new)
    return {
        "enrolments": sum(len(c) for c in codes),
        "memberships": len(every),
        "new_memberships": len(new),
    }


def catalogue_figures(dataset: StreamedDataset, per_run: int) -> dict[str, Any]:
    """The whole catalogue by the generator: what a full first sync would serve and look up.

    Known courses in `courses` order (the generator's courses are exchangeable: learners are
    drawn uniformly, so any order gives the same curve up to noise), in chunks of `per_run`:
    enrolments and memberships not seen in an earlier chunk (= membership look-ups).
    """
    known = np.flatnonzero(dataset.courses["known"].to_numpy())
    seen = np.zeros(dataset.learners.count * 4, dtype=bool)
    chunks = []
    for start in range(0, len(known), per_run):
        enrolments, new = 0, 0
        for course in known[start : start + per_run]:
            codes = dataset.course_arrays(int(course)).membership_code
            enrolments += len(codes)
            fresh = np.unique(codes[~seen[codes]])
            new += len(fresh)
            seen[fresh] = True
        chunks.append({"enrolments": enrolments, "new_memberships": new})
    runs = dataset.runs.join(
        dataset.courses.filter("known").select("course_uuid"), on="course_uuid"
    ).height
    return {
        "known_courses": len(known),
        "known_runs": runs,
        "enrolments_in_known_courses": sum(c["enrolments"] for c in chunks),
        "memberships_to_look_up": int(seen.sum()),
        "chunks_of_per_run": chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="large")
    parser.add_argument("--courses-per-run", type=int, default=250)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--max-runs",
        type=int,
        help="only the first K runs of --courses-per-run courses, each measured alone",
    )
    parser.add_argument(
        "--catalogue-figures",
        action="store_true",
        help="with --max-runs: also count the whole catalogue's enrolments and look-ups",
    )
    parser.add_argument(
        "--platform",
        type=Path,
        help="with --max-runs: a seeded platform database to copy, seeded there when missing "
        "(--max-runs 0 only seeds it)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.max_runs is not None:
        return partial(args)
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


def partial(args: argparse.Namespace) -> None:
    simulator = SimulatorProcess(args.workload, args.latency_ms)
    started = time.time()
    try:
        measured = measured_chunks(
            args.workload,
            simulator,
            args.courses_per_run,
            args.max_runs,
            args.concurrency,
            args.latency_ms,
            seeded=args.platform,
        )
    finally:
        simulator.stop()
    result: dict[str, Any] = {
        "workload": args.workload,
        "database": "sqlite",
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "memory_gib": _memory_gib()},
        "seconds": round(time.time() - started),
        **measured,
    }
    if args.catalogue_figures:
        dataset = load(args.workload)
        if isinstance(dataset, StreamedDataset):
            mark = time.perf_counter()
            result["catalogue"] = catalogue_figures(dataset, args.courses_per_run)
            result["catalogue"]["seconds"] = round(time.perf_counter() - mark, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def _memory_gib() -> float:
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(total_kib / 1024 / 1024, 1)


if __name__ == "__main__":
    main()
