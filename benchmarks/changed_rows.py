"""The next day's progress step, per changed row against the whole course (issue 33).

    python -m benchmarks.changed_rows --workload teachcomputing --repeat 3

In one process, without Dagster: a generated workload behind the in-process simulator and a
fresh SQLite platform database; the sync's steps run a first night, the simulator moves a day on,
and the next day's enrolments, linking and latest enrolments run once. The database as linking
left it is copied, and the next day's progress step (plan and write, every course) runs on fresh
copies, alternately planning only the changed learners (`changed_rows_only`, the nightly default)
and every learner (as a recomputation does), `--repeat` times each. Printed: the median seconds of
each, the ratio, the learners planned, rows written and statements sent, and whether both left
the same tables. The ratio is what to read: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue, seed_users
from sync_assets.platform.migrate import upgrade
from sync_assets.simulator.app import (
    SIMULATOR_CONSUMER_KEY,
    SIMULATOR_CONSUMER_SECRET,
    PartnersApiSimulator,
)
from sync_assets.simulator.datasets import generate
from sync_assets.simulator.transports import IN_PROCESS_BASE_URL, SimulatorTransport
from sync_assets.sync import fact_names, steps
from sync_assets.sync.outcomes import Outcome, Outcomes

# What both must leave alike (write times aside: each write stamps its own).
TABLES = {
    "future_learn_memberships": "membership_uuid, user_id, external_learner_id",
    "achievements": "user_id, activity_id, programme_id, progress, state, completed_at",
    "achievement_transitions": "achievement_id, from_state, to_state",
    "completion_events": "achievement_id, user_id, activity_id, programme_id",
    "user_programme_enrolments": "user_id, programme_id, state, auto_enrolled",
}


class _Held(Outcomes):
    """Outcomes held in memory (the Dagster path reads them from storage)."""

    def __init__(self, outcomes: Mapping[str, Outcome]) -> None:
        self._outcomes = dict(outcomes)

    def __getitem__(self, course: str) -> Outcome:
        return self._outcomes[course]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)


class _Quiet:
    def warning(self, msg: str) -> None:
        pass


async def _night(simulator: PartnersApiSimulator, engine: sa.Engine, now: datetime) -> tuple:
    """Course runs, enrolments, linking and latest enrolments of every known course."""
    settings = ClientSettings(
        IN_PROCESS_BASE_URL, SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET, concurrency=16
    )
    async with PartnersApiClient(settings, SimulatorTransport(simulator)) as client:
        course_runs = await steps.fetch_course_runs(client, engine)
        runs = course_runs.runs
        courses = course_runs.known_course_uuids()
        fetched = await steps.fetch_enrolments(client, runs, courses)
        linked, _ = await steps.link_memberships(client, engine, fetched.frames(), now)
    courses = [c for c in courses if c in linked and c in fetched.frames()]
    latest = dict(steps.latest_outcomes(courses, fetched.outcomes, linked, runs))
    return courses, runs, (_Held(fetched.outcomes), _Held(latest), _Held(linked))


def _progress(
    url: str, courses: list[str], runs: Any, inputs: tuple, now: datetime, changed_only: bool
) -> dict[str, Any]:
    engine = create_platform_engine(url)
    options = steps.WriteOptions(now, changed_rows_only=changed_only)
    started = time.perf_counter()
    outcomes = list(steps.progress_outcomes(engine, courses, runs, inputs, options, _Quiet()))
    seconds = time.perf_counter() - started
    facts = [o.facts for _, o in outcomes]
    with engine.connect() as connection:
        tables = {
            name: sorted(
                repr(tuple(row))
                for row in connection.execute(sa.text(f"SELECT {columns} FROM {name}")).all()
            )
            for name, columns in TABLES.items()
        }
    engine.dispose()
    return {
        "seconds": seconds,
        "plan_seconds": sum(f.get(fact_names.PLAN_SECONDS, 0.0) for f in facts),
        "learners": sum(f.get(fact_names.LEARNERS, 0) for f in facts),
        "learners_planned": sum(f.get(fact_names.LEARNERS_PLANNED, 0) for f in facts),
        "rows_written": sum(f.get("rows_written", 0) for f in facts),
        "sql_statements": sum(f.get(fact_names.SQL_STATEMENTS, 0) for f in facts),
        "failed": sum(1 for _, o in outcomes if not hasattr(o, "frame")),
        "tables": tables,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="changed-rows-"))
    dataset = generate(args.workload)
    simulator = PartnersApiSimulator(
        dataset, consumer_key=SIMULATOR_CONSUMER_KEY, consumer_secret=SIMULATOR_CONSUMER_SECRET
    )
    base = workdir / "platform.db"
    url = f"sqlite:///{base}"
    engine = create_platform_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        seed_users(connection, dataset.users)
    first = datetime.now(UTC)
    courses, runs, inputs = asyncio.run(_night(simulator, engine, first))
    list(
        steps.progress_outcomes(
            engine,
            courses,
            runs,
            inputs,
            steps.WriteOptions(first, changed_rows_only=True),
            _Quiet(),
        )
    )
    simulator.advance_day()
    next_day = first + timedelta(days=1)
    courses, runs, inputs = asyncio.run(_night(simulator, engine, next_day))
    engine.dispose()
    results: dict[str, list[dict[str, Any]]] = {"changed_rows": [], "whole_course": []}
    modes = [("changed_rows", True), ("whole_course", False)]
    for turn in range(args.repeat):
        for name, changed_only in modes if turn % 2 == 0 else modes[::-1]:  # neither always first
            copy = workdir / f"{name}.db"
            shutil.copy(base, copy)
            results[name].append(
                _progress(f"sqlite:///{copy}", courses, runs, inputs, next_day, changed_only)
            )
    summary: dict[str, Any] = {"workload": args.workload, "courses": len(courses)}
    for name, runs_of in results.items():
        last = runs_of[-1]
        summary[name] = {
            "median_seconds": round(statistics.median(r["seconds"] for r in runs_of), 3),
            "median_plan_seconds": round(statistics.median(r["plan_seconds"] for r in runs_of), 3),
            **{k: last[k] for k in ("learners", "learners_planned", "rows_written")},
            "sql_statements": last["sql_statements"],
            "failed": last["failed"],
        }
    summary["ratio_changed_to_whole"] = round(
        summary["changed_rows"]["median_seconds"] / summary["whole_course"]["median_seconds"], 3
    )
    summary["plan_ratio_changed_to_whole"] = round(
        summary["changed_rows"]["median_plan_seconds"]
        / summary["whole_course"]["median_plan_seconds"],
        3,
    )
    summary["same_tables"] = all(
        a["tables"] == b["tables"]
        for a, b in zip(results["changed_rows"], results["whole_course"], strict=True)
    )
    print(json.dumps(summary, indent=2))
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
