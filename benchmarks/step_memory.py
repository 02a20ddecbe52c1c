"""Peak memory of the enrolments step: every course's outcome held, or each spooled as it comes.

    python -m benchmarks.step_memory --workload large
    python -m benchmarks.step_memory --workload large --courses 300 --rounds 2

The offline method of analysis.md ("Issue 21: peak memory on large"), for the enrolments step
alone: the simulator serves the workload over loopback (no latency), a SQLite platform holds the
catalogue and the workload's activities (what the course-runs step reads), and each variant runs
in a fresh process of its own with a fresh HTTP cache, so every report is fetched and parsed:

- `collected`: `fetch_enrolments`, every course's outcome kept until the last course is in,
  then spooled to disk (what the `enrolments` asset did before issue 33);
- `streamed`: `stream_enrolments`, each course's outcome spooled to disk as soon as it is made
  and dropped (what the asset does now).

Each process reports its peak resident memory (`ru_maxrss`) before the step (imports, the course
runs) and at its end; the step's own share is the difference. Ratios are streamed / collected, in
one script; both spools must hold the same courses and rows. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("collected", "streamed")
SPLITS = ("partitioned", "sliced")


def peak_mib() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own memory map.

    Not `ru_maxrss`: Linux carries it across fork and exec, so a child of a parent holding the
    generated dataset (~0.9 GiB for `large`) would start at the parent's figure.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


def child(variant: str, spool_dir: Path, limit: int | None) -> dict[str, Any]:
    """One variant of the step, in this (fresh) process; the environment names the simulator,
    the platform database and the data folder (the HTTP cache)."""
    from sync_assets.defs.resources import PartnersApi
    from sync_assets.defs.storage import OutcomeSpool
    from sync_assets.partners_api.client import run
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.sync import steps

    engine = create_platform_engine()
    spool = OutcomeSpool(spool_dir)

    async def step() -> tuple[str, float, float]:
        async with PartnersApi().client() as client:
            runs = (await steps.fetch_course_runs(client, engine)).runs
            courses = sorted(set(runs.filter("known")["course_uuid"]))[:limit]
            before = peak_mib()
            started = time.perf_counter()
            if variant == "collected":
                fetched = await steps.fetch_enrolments(client, runs, courses)
                for course, outcome in fetched.outcomes.items():
                    spool.add(course, outcome)
                summary = fetched.summary()
            else:
                tally = await steps.stream_enrolments(client, runs, courses, spool.add)
                summary = tally.summary()
            return summary, before, time.perf_counter() - started

    summary, before, seconds = run(step())
    rows = sum(spool[course].frame.height for course in spool.computed())
    return {
        "variant": variant,
        "summary": summary,
        "courses": len(spool),
        "rows": rows,
        "peak_before_step_mib": round(before, 1),
        "peak_mib": round(peak_mib(), 1),
        "step_mib": round(peak_mib() - before, 1),
        "step_seconds": round(seconds, 1),
    }


def split_child(variant: str, memberships: int, per_course: int, courses: int) -> dict[str, Any]:
    """Linking's last part alone, on synthetic rows of `large`'s shape: the run's LINKED_SCHEMA
    rows (one per membership) joined to each course's memberships and split by course, either
    by partitioning the joined rows (before issue 33) or as slices of them (now)."""
    import numpy as np
    import polars as pl

    from sync_assets.sync.steps import linking

    generator = np.random.default_rng(33)
    uuids = pl.Series("membership_uuid", [f"{n:032x}-0000" for n in range(memberships)])
    every = linking._conform(  # the step's own rows, as it builds them
        pl.DataFrame(
            {
                "membership_uuid": uuids,
                "user_id": pl.Series([str(n) for n in range(memberships)]),
            }
        ),
        write=True,
    )
    memberships_of = {
        f"{course:08x}-course": uuids.gather(
            generator.choice(memberships, per_course, replace=False)
        ).unique()
        for course in range(courses)
    }
    before = peak_mib()
    started = time.perf_counter()
    if variant == "sliced":
        by_course = linking._rows_by_course(every, memberships_of, {})
    else:
        joined = (
            pl.concat(
                [
                    u.to_frame().with_columns(course_uuid=pl.lit(c))
                    for c, u in memberships_of.items()
                ],
                how="vertical_relaxed",
            )
            .sort("membership_uuid")
            .join(every, on="membership_uuid", how="inner", maintain_order="left")
            .select("course_uuid", *every.columns)
        )
        parts = joined.partition_by(
            "course_uuid", as_dict=True, include_key=False, maintain_order=True
        )
        by_course = {course: parts[(course,)] for course in memberships_of}
    return {
        "variant": variant,
        "rows": sum(frame.height for frame in by_course.values()),
        "peak_before_step_mib": round(before, 1),
        "peak_mib": round(peak_mib(), 1),
        "step_mib": round(peak_mib() - before, 1),
        "step_seconds": round(time.perf_counter() - started, 1),
    }


def measure_split(rounds: int) -> list[dict[str, Any]]:
    """`split_child` in a fresh process per variant, at `large`'s shape: ~1.07M memberships,
    ~2M (course, membership) pairs over 980 courses."""
    results = []
    for _ in range(rounds):
        for variant in SPLITS:
            results.append(in_fresh_process("--split-child", variant))
    return results


def in_fresh_process(*options: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """This script's child mode in a process of its own: the JSON line it prints last."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.step_memory", *options],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def measure(workload: str, rounds: int, limit: int | None) -> list[dict[str, Any]]:
    from benchmarks.harness import SimulatorProcess, sync_env
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.demo_catalogue import seed_activities, seed_demo_catalogue
    from sync_assets.platform.migrate import upgrade
    from sync_assets.simulator.datasets import generate

    results = []
    with tempfile.TemporaryDirectory(prefix="step-memory-") as scratch:
        workdir = Path(scratch)
        url = f"sqlite:///{workdir / 'platform.sqlite3'}"
        engine = create_platform_engine(url)
        upgrade(engine)
        with engine.begin() as connection:  # the enrolments step reads no users
            seed_demo_catalogue(connection)
            seed_activities(connection, generate(workload).activities())
        engine.dispose()
        simulator = SimulatorProcess(workload, latency_ms=0)
        try:
            for number in range(rounds):
                for variant in VARIANTS:  # alternating, so load drifts touch both alike
                    home = workdir / f"{variant}-{number}"
                    env = sync_env(simulator, url, home, concurrency=16)
                    options = ("--courses", str(limit)) if limit else ()
                    result = in_fresh_process(
                        *("--child", variant, *options),
                        env={**env, "STEP_MEMORY_SPOOL": str(home / "spool")},
                    )
                    results.append(result)
        finally:
            simulator.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--courses", type=int, help="only the first N known courses (by uuid)")
    parser.add_argument(
        "--linking-split",
        action="store_true",
        help="measure linking's split by course instead (synthetic rows of large's shape)",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--split-child", choices=SPLITS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if args.child:
        spool = Path(os.environ["STEP_MEMORY_SPOOL"])
        spool.mkdir(parents=True)
        print(json.dumps(child(args.child, spool, args.courses)))
        return
    if args.split_child:
        print(json.dumps(split_child(args.split_child, 1_070_000, 2_040, 980)))
        return
    if args.linking_split:
        results, (before, after) = measure_split(args.rounds), SPLITS
        figures: dict[str, Any] = {"measured": "linking split by course, large's shape"}
    else:
        results, (before, after) = measure(args.workload, args.rounds, args.courses), VARIANTS
        figures = {"measured": "enrolments step", "workload": args.workload}
        figures["courses"] = args.courses or "all known"
    by_variant = {v: [r for r in results if r["variant"] == v] for v in (before, after)}
    figures |= {
        "same_rows": len({(r.get("courses"), r["rows"]) for r in results}) == 1,
        "peak_ratio": round(
            max(r["peak_mib"] for r in by_variant[after])
            / max(r["peak_mib"] for r in by_variant[before]),
            3,
        ),
        "step_ratio": round(
            max(r["step_mib"] for r in by_variant[after])
            / max(r["step_mib"] for r in by_variant[before]),
            3,
        ),
        "runs": results,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
