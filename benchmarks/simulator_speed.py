"""How fast the simulator serves, before and after a change to it, in one script (issue 33).

    python -m benchmarks.simulator_speed --before 8b74429 --workloads teachcomputing,large,huge

The simulator is driven in process, through `PartnersApiSimulator.handle` (the JWT check, the
routing, the ETag and the body: what a request costs it over loopback too, less the HTTP framing),
by 16 threads at once (the harness's concurrency; `ThreadingHTTPServer` answers each connection
on a thread of its own), with no latency. Each variant runs in a child process of its own:
`before` from a `git archive` of `--before` (ahead of the editable install on the import path),
`after` this tree; the child says which `sync_assets` it imported.

- `teachcomputing`, `large`: the nights of the harness. Night one asks each known run's report
  (200s); night two asks them again with their ETags (all 304s); then the data moves a day on and
  the next night asks them again with their ETags (the changed ones 200s) and looks up the
  memberships first seen in the changed reports, 16 at a time from the first request on, as the
  sync sends them right after `advance_day`.
- `huge`: served a course at a time, as `benchmarks.chunks` syncs it: a course's reports, then the
  look-ups of its memberships, for `--huge-courses` courses.

Figures are requests per second of each phase. The machine is shared and its load moves within
minutes, so the variants run in alternating rounds (`--rounds`: before, after, before, …) and
each phase keeps its best round; the ratios after / before of those are what to read, not the
absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THREADS = 16
BASE_URL = "http://127.0.0.1:8000"


def before_tree(commit: str, into: Path) -> Path:
    """The package as it was at `commit`, to run with PYTHONPATH (before the editable install)."""
    import tarfile
    from io import BytesIO

    archive = subprocess.run(
        ["git", "archive", commit, "sync_assets"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


# --- the child: one variant of the simulator, driven in process ---------------------------------


class Driver:
    """Requests to one simulator from `THREADS` threads, timed a phase at a time."""

    def __init__(self, simulator: Any) -> None:
        import jwt

        from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET

        now = int(time.time())
        claims = {"iss": SIMULATOR_CONSUMER_KEY, "iat": now, "exp": now + 7200}
        token = jwt.encode(claims, SIMULATOR_CONSUMER_SECRET, algorithm="HS256")
        self.headers = {"authorization": f"Bearer {token}"}
        self.simulator = simulator
        self.pool = ThreadPoolExecutor(THREADS)

    def get(self, path: str, etag: str | None = None) -> Any:
        from sync_assets.simulator.app import SimulatedRequest

        headers = {**self.headers, **({"if-none-match": etag} if etag else {})}
        response = self.simulator.handle(SimulatedRequest("GET", f"{BASE_URL}{path}", headers))
        if response.status not in (200, 304):
            raise RuntimeError(f"{path}: HTTP {response.status}")
        return response

    def phase(self, requests: list[Callable[[], Any]]) -> tuple[list[Any], dict[str, float]]:
        started = time.perf_counter()
        answers = list(self.pool.map(lambda request: request(), requests))
        seconds = time.perf_counter() - started
        return answers, {
            "requests": len(requests),
            "seconds": round(seconds, 3),
            "per_second": round(len(requests) / seconds, 1),
        }


def report_path(run: str) -> str:
    return f"/partners/course_runs/{run}/course_enrolments_report"


def memberships_in(bodies: list[bytes]) -> list[str]:
    seen = {
        record["organisation_membership"]["uuid"]: None
        for body in bodies
        for record in json.loads(body)
    }
    return list(seen)


def nights(workload: str) -> dict[str, Any]:
    """Night one, a quiet night two, and the next day, on a whole generated dataset."""
    import polars as pl

    from sync_assets.simulator.app import PartnersApiSimulator
    from sync_assets.simulator.datasets import generate

    dataset = generate(workload)
    driver = Driver(PartnersApiSimulator(dataset))
    known = dataset.courses.filter("known")["course_uuid"].implode()
    runs = dataset.runs.filter(pl.col("course_uuid").is_in(known))["run_uuid"].to_list()
    figures: dict[str, Any] = {}

    def reports(etags: dict[str, str]) -> list[Callable[[], Any]]:
        return [lambda run=run: driver.get(report_path(run), etags.get(run)) for run in runs]

    first, figures["first_night_reports"] = driver.phase(reports({}))
    etags = {run: answer.headers["ETag"] for run, answer in zip(runs, first, strict=True)}
    _, figures["quiet_night_reports_304"] = driver.phase(reports(etags))
    seen = set(memberships_in([answer.body for answer in first]))
    dataset.advance_day()
    answers, figures["next_day_reports"] = driver.phase(reports(etags))
    changed = [answer.body for answer in answers if answer.status == 200]
    figures["next_day_reports"]["changed_200"] = len(changed)
    new = [uuid for uuid in memberships_in(changed) if uuid not in seen]
    lookups = [
        lambda uuid=uuid: driver.get(f"/partners/organisation_memberships/{uuid}") for uuid in new
    ]
    _, figures["next_day_look_ups"] = driver.phase(lookups)
    return figures


def course_at_a_time(courses: int) -> dict[str, Any]:
    """`huge`, a course's reports then its memberships' look-ups, course after course."""
    from sync_assets.simulator.app import PartnersApiSimulator
    from sync_assets.simulator.datasets import load

    dataset = load("huge")
    driver = Driver(PartnersApiSimulator(dataset))
    known = dataset.courses.filter("known")["course_uuid"].to_list()[:courses]
    totals = {"reports": [0, 0.0], "look_ups": [0, 0.0]}
    for course in known:
        runs = dataset.runs.filter(dataset.runs["course_uuid"] == course)["run_uuid"].to_list()
        answers, served = driver.phase(
            [lambda run=run: driver.get(report_path(run)) for run in runs]
        )
        uuids = memberships_in([answer.body for answer in answers])
        _, looked = driver.phase(
            [
                lambda uuid=uuid: driver.get(f"/partners/organisation_memberships/{uuid}")
                for uuid in uuids
            ]
        )
        for name, phase in (("reports", served), ("look_ups", looked)):
            totals[name][0] += phase["requests"]
            totals[name][1] += phase["seconds"]
    return {
        f"course_at_a_time_{name}": {
            "requests": count,
            "seconds": round(seconds, 3),
            "per_second": round(count / seconds, 1),
        }
        for name, (count, seconds) in totals.items()
    }


def child(workload: str, huge_courses: int) -> None:
    import sync_assets

    figures = course_at_a_time(huge_courses) if workload == "huge" else nights(workload)
    print(json.dumps({"sync_assets": str(Path(sync_assets.__file__).parent), **figures}))


# --- the parent: both variants, and their ratios ------------------------------------------------


def run_variant(workload: str, huge_courses: int, tree: Path | None) -> dict[str, Any]:
    env = {**os.environ}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, __file__, "--child", workload, "--huge-courses", str(huge_courses)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (tree or ROOT) / "sync_assets"
    if Path(figures["sync_assets"]) != expected:
        raise RuntimeError(f"the child imported {figures['sync_assets']}, not {expected}")
    return figures


def best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each phase's fastest round: the one the machine's other work disturbed least."""
    phases = [phase for phase, value in rounds[0].items() if isinstance(value, dict)]
    best = {
        phase: max((r[phase] for r in rounds), key=lambda p: p["per_second"]) for phase in phases
    }
    return {**best, "rounds": len(rounds)}


def ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {
        phase: round(after[phase]["per_second"] / before[phase]["per_second"], 2)
        for phase in after
        if isinstance(after[phase], dict) and phase in before
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", help="the commit measured as `before`")
    parser.add_argument("--workloads", default="teachcomputing,huge")
    parser.add_argument("--huge-courses", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each variant")
    parser.add_argument(
        "--large-rounds", type=int, default=1, help="rounds on large (~3 min each when loaded)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.huge_courses)
        return
    if not args.before:
        parser.error("--before COMMIT is required")
    results: dict[str, Any] = {"before_commit": args.before, "threads": THREADS, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="bench-simulator-before-") as code:
        tree = before_tree(args.before, Path(code))
        for workload in args.workloads.split(","):
            rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for _ in range(args.large_rounds if workload == "large" else args.rounds):
                rounds["before"].append(run_variant(workload, args.huge_courses, tree))
                rounds["after"].append(run_variant(workload, args.huge_courses, None))
            before, after = best_of(rounds["before"]), best_of(rounds["after"])
            result = {"before": before, "after": after, "after_over_before": ratios(before, after)}
            results["workloads"][workload] = result
            print(workload, json.dumps(result["after_over_before"]), flush=True)
            for phase, ratio in result["after_over_before"].items():
                print(
                    f"  {phase}: {before[phase]['per_second']}/s -> "
                    f"{after[phase]['per_second']}/s ({ratio}x)",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
