"""Peak memory of the linking step, phase by phase, on data of `large`'s shape (a first sync).

    python -m benchmarks.linking_memory --courses 196 --workdir /tmp/linking-memory
    python -m benchmarks.linking_memory --courses 196 --workdir /tmp/linking-memory --before main

`large`'s first sync peaks in linking (1,319 MiB, benchmarks/analysis.md, issue 33). This runs
the step's real code (`steps.link_memberships`) against the real simulator serving `large` over
loopback (no latency) and a SQLite platform seeded as a first sync finds it: the catalogue, the
workload's activities, all of its users and their caseless email keys (which the enrolments step
computes before linking), no memberships. The enrolments step's output for the first
`--courses` known courses (by uuid) is made once by the real step and kept as parquet, so each
course's frame is read when linking asks for it, as the asset's input is.

Each variant runs in a fresh process on a fresh copy of that platform database (linking writes
what it fetched). Its phases are marked by wrapping the functions the step calls (the code under
test is not changed): for each, the process's peak resident memory (VmHWM) before and after, and
its resident memory (VmRSS) after. `--before COMMIT` runs the package at that commit (a `git
archive` ahead of the editable install on the import path) against the checkout, alternating;
the two must produce the same rows per course. Printed: each phase's rise of the peak, after /
before ratios of the step's peak above its start, and how the slice scales to all 980 courses.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Functions linking calls, in the order it calls them: (module, attribute, phase name).
PHASES = (
    ("sync_assets.platform.sync_store", "membership_states", "stored states"),
    ("sync_assets.partners_api.client", "PartnersApiClient.memberships", "look-ups"),
    ("sync_assets.sync.steps.linking", "keep_fetched_memberships", "keep fetched"),
    ("sync_assets.sync.steps.linking", "_users_to_match", "users to match"),
    ("sync_assets.sync.steps.linking", "match_memberships", "match"),  # before 'mem'
    ("sync_assets.sync.steps.linking", "links_and_ambiguous", "match"),
    # Since the match in chunks: each chunk's users read and matched (the two phases above).
    ("sync_assets.sync.steps.linking", "_match_in_chunks", "users to match and match"),
    ("sync_assets.sync.steps.linking", "_membership_rows", "membership rows"),
    ("sync_assets.sync.steps.linking", "_rows_by_course", "rows by course"),
)


def memory_mib() -> dict[str, float]:
    """This process's peak (VmHWM) and current (VmRSS) resident memory."""
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            figures[name] = int(value.split()[0]) / 1024  # kB
    return figures


def _wrap(marks: list[dict[str, Any]], phase: str, function: Any) -> Any:
    """`function`, recording the memory before and after each call under `phase`."""

    def record(before: dict[str, float]) -> None:
        after = memory_mib()
        marks.append(
            {
                "phase": phase,
                "peak_before": round(before["VmHWM"], 1),
                "peak_after": round(after["VmHWM"], 1),
                "rss_after": round(after["VmRSS"], 1),
            }
        )

    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            before = memory_mib()
            result = await function(*args, **kwargs)
            record(before)
            return result

        return wrapped_async

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = memory_mib()
        result = function(*args, **kwargs)
        record(before)
        return result

    return wrapped


def child(spool: Path) -> dict[str, Any]:
    """The linking step once, in this fresh process (the environment names the simulator and
    the platform database)."""
    import importlib

    import sync_assets
    from sync_assets.defs.resources import PartnersApi
    from sync_assets.defs.storage import ObjectStore, StoredOutcomes
    from sync_assets.partners_api.client import run
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.sync import steps
    from sync_assets.sync.outcomes import Computed

    marks: list[dict[str, Any]] = []
    for module_name, attribute, phase in PHASES:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        if hasattr(owner, name):  # a phase the code at hand no longer has is left out
            setattr(owner, name, _wrap(marks, phase, getattr(owner, name)))

    keys = json.loads((spool / "keys.json").read_text())
    enrolments = StoredOutcomes(ObjectStore(spool), keys)
    engine = create_platform_engine()

    async def step() -> Any:
        async with PartnersApi().client() as client:
            # From here: the client and its imports are the step's floor, not its growth.
            marks.append({"phase": "start", **memory_mib()})
            started = time.perf_counter()
            linked = await steps.link_memberships(
                client, engine, enrolments.frames(sorted(keys)), datetime.now(UTC)
            )
            marks.append({"phase": "end", "seconds": time.perf_counter() - started})
            return linked

    outcomes, stats = run(step())
    end = memory_mib()
    start, seconds = marks.pop(0), marks.pop()["seconds"]
    digest = hashlib.sha256()
    rows = 0
    for course in sorted(outcomes):
        outcome = outcomes[course]
        assert isinstance(outcome, Computed), (course, outcome)
        frame = outcome.frame.drop("fetched_at", "linked_at", "gone_at").sort("membership_uuid")
        rows += frame.height
        digest.update(course.encode())
        digest.update(frame.hash_rows(seed=3).to_numpy().tobytes())
        digest.update(json.dumps(outcome.facts, sort_keys=True, default=str).encode())
    engine.dispose()
    return {
        "sync_assets": str(Path(sync_assets.__file__).parent),
        "summary": stats.summary(),
        "courses": len(outcomes),
        "rows": rows,
        "digest": digest.hexdigest(),
        "seconds": round(seconds, 1),
        "peak_at_start": round(start["VmHWM"], 1),
        "rss_at_start": round(start["VmRSS"], 1),
        "peak_at_end": round(end["VmHWM"], 1),
        "step_peak_mib": round(end["VmHWM"] - start["VmHWM"], 1),
        "phases": marks,
    }


def prepare(workdir: Path, courses: int) -> Path:
    """The platform database and the enrolments step's output for the slice, made once."""
    from benchmarks.harness import SimulatorProcess, seed_platform, sync_env
    from sync_assets.defs.resources import PartnersApi
    from sync_assets.defs.storage import OutcomeSpool
    from sync_assets.partners_api.client import run
    from sync_assets.platform.change_tracking import refresh_linking_state
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.simulator.datasets import generate
    from sync_assets.sync import steps

    platform = workdir / "platform.sqlite3"
    spool = workdir / f"enrolments-{courses}"
    if not platform.exists():
        url = f"sqlite:///{workdir / 'seeding.sqlite3'}"
        seed_platform(url, generate("large"))
        engine = create_platform_engine(url)
        refresh_linking_state(engine)  # the keys, as the enrolments step leaves them
        engine.dispose()
        (workdir / "seeding.sqlite3").rename(platform)
    if not (spool / "keys.json").exists():
        simulator = SimulatorProcess("large", latency_ms=0)
        try:
            env = sync_env(simulator, f"sqlite:///{platform}", workdir / "prepare", 16)
            os.environ.update(env)
            out = OutcomeSpool(spool)
            engine = create_platform_engine()

            async def fetch() -> None:
                async with PartnersApi().client() as client:
                    runs = (await steps.fetch_course_runs(client, engine)).runs
                    known = sorted(set(runs.filter("known")["course_uuid"]))[:courses]
                    await steps.stream_enrolments(client, runs, known, out.add)

            run(fetch())
            engine.dispose()
        finally:
            simulator.stop()
        keys = {course: out._keys[course] for course in out.computed()}
        (spool / "keys.json").write_text(json.dumps(keys))
    return spool


def in_fresh_process(spool: Path, env: dict[str, str], code: Path | None) -> dict[str, Any]:
    # Run as a script, not with -m: the working directory would come first on the import path.
    environment = {**env, "PYTHONPATH": os.pathsep.join(str(p) for p in (code, ROOT) if p)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(spool)],
        env=environment,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (code or ROOT) / "sync_assets"
    if Path(result["sync_assets"]) != expected:
        raise RuntimeError(f"the child imported {result['sync_assets']}, not {expected}")
    return result


def phase_rises(result: dict[str, Any]) -> dict[str, float]:
    """Each phase's rise of the peak; `before first phase` is reading the courses' frames and
    listing the run's memberships (and the stored states' keys)."""
    rises = {}
    previous = result["peak_at_start"]
    for mark in result["phases"]:
        if mark["phase"] not in rises:
            rises["before " + mark["phase"]] = round(mark["peak_before"] - previous, 1)
        rises[mark["phase"]] = round(mark["peak_after"] - mark["peak_before"], 1)
        previous = mark["peak_after"]
    rises["after last phase"] = round(result["peak_at_end"] - previous, 1)
    return {k: v for k, v in rises.items() if v or not k.startswith(("before", "after"))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--courses", type=int, default=196, help="first N known courses")
    parser.add_argument("--workdir", type=Path, help="keep the prepared data here (reused)")
    parser.add_argument("--before", help="a commit to compare with (alternating rounds)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    from benchmarks.harness import SimulatorProcess, sync_env
    from benchmarks.simulator_speed import before_tree

    with tempfile.TemporaryDirectory(prefix="linking-memory-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        spool = prepare(workdir, args.courses)
        tree = before_tree(args.before, Path(scratch) / "before") if args.before else None
        simulator = SimulatorProcess("large", latency_ms=0)
        results: list[dict[str, Any]] = []
        try:
            for number in range(args.rounds):
                variants = ["after", "before"] if tree else ["after"]
                if number % 2:
                    variants.reverse()
                for variant in variants:
                    home = Path(scratch) / f"{variant}-{number}"
                    home.mkdir(parents=True)
                    shutil.copyfile(workdir / "platform.sqlite3", home / "platform.sqlite3")
                    env = sync_env(simulator, f"sqlite:///{home / 'platform.sqlite3'}", home, 16)
                    result = in_fresh_process(spool, env, tree if variant == "before" else None)
                    result |= {"variant": variant, "round": number, "rises": phase_rises(result)}
                    print(json.dumps(result))
                    results.append(result)
                    shutil.rmtree(home)
        finally:
            simulator.stop()
    figures: dict[str, Any] = {"courses": args.courses, "before_commit": args.before}
    if tree:
        by = {v: [r for r in results if r["variant"] == v] for v in ("before", "after")}
        figures["same_output"] = len({(r["rows"], r["digest"]) for r in results}) == 1
        figures["step_peak_ratio_each_round"] = [
            round(a["step_peak_mib"] / b["step_peak_mib"], 3)
            for b, a in zip(by["before"], by["after"], strict=True)
        ]
        figures["process_peak_ratio_each_round"] = [
            round(a["peak_at_end"] / b["peak_at_end"], 3)
            for b, a in zip(by["before"], by["after"], strict=True)
        ]
    figures["runs"] = results
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
