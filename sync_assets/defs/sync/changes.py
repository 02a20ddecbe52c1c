"""The night's check of the courses, as Dagster sees it (the check itself: sync/steps/changes.py).

`course_runs` checks the courses of its run (every course partition in the nightly check, a run
of `course_runs` alone; the run's own partitions otherwise). The nightly check lists, in its one
materialisation, which courses changed (`changed_courses`, what the runs made for the night
cover) and every course that needs no run, with why (`courses_not_run`: unchanged, withdrawn or
no longer known): that event is when each was last checked. No per-course event is made for a
course that needs no run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl
from sqlalchemy.engine import Engine

from sync_assets.defs.resources import PartnersApi
from sync_assets.defs.sync.course_step import (
    NO_LONGER_KNOWN_FACTS,
    UNCHANGED_NOTE,
    WITHDRAWN_FACTS,
    named_partitions,
)
from sync_assets.defs.sync.provenance import CHECK_RUN_TAG
from sync_assets.partners_api.metrics import ApiMetrics
from sync_assets.runs.turns import PARENT_RUN_TAG
from sync_assets.sync import fact_names, steps
from sync_assets.sync.steps.changes import ReportCheck
from sync_assets.sync.steps.course_runs import CourseRuns

CHECK_JOB = "futurelearn_check"  # the night's check: `course_runs` alone, every course
CHANGED_COURSES = "changed_courses"
COURSES_NOT_RUN = "courses_not_run"
CHECKED_COURSES = "checked_courses"
COURSES_CHECKED_CURRENT = "courses_checked_current"


@dataclass(frozen=True)
class CheckScope:
    """The course partitions a run checks, and which course each names."""

    keys: list[str]  # in the partitions' order
    uuid_of: dict[str, str]  # partition key → course uuid, for the courses to check
    not_run: dict[str, tuple[str, str, str]]  # key → (uuid, status, note): nothing to check
    titles: dict[str, str]  # course uuid → title now


@dataclass(frozen=True)
class CheckedCourses:
    """What `course_runs` fetched and checked, and what it cost."""

    fetched: CourseRuns
    scope: CheckScope
    check: ReportCheck
    metrics: ApiMetrics
    seconds: float


async def check_the_courses(
    partners_api: PartnersApi, engine: Engine, keys: Sequence[str]
) -> CheckedCourses:
    """The runs list, then every report of the courses `keys` names, once, conditionally."""
    started = time.perf_counter()
    async with partners_api.client() as client:
        fetched = await steps.fetch_course_runs(client, engine)
        scope = check_scope(keys, fetched.runs, fetched.known)
        courses = sorted(set(scope.uuid_of.values()))
        skip_if = steps.courses_to_skip(engine, fetched.runs, courses)
        check = await steps.check_courses(client, fetched.runs, courses, skip_if)
        metrics = client.metrics
    return CheckedCourses(fetched, scope, check, metrics, time.perf_counter() - started)


def check_scope(
    keys: Sequence[str], course_runs: pl.DataFrame, known: Mapping[str, str]
) -> CheckScope:
    """Each key's course: listed and known (checked), withdrawn or no longer known (not run)."""
    named = named_partitions(list(keys), course_runs, known)
    # What a step records for such a course (course_step's facts): status and note.
    facts = dict.fromkeys(named.withdrawn, WITHDRAWN_FACTS) | dict.fromkeys(
        named.no_longer_known, NO_LONGER_KNOWN_FACTS
    )
    not_run = {
        key: (named.uuid_of[key] or "", said[fact_names.STATUS], said[fact_names.NOTE])
        for key, said in facts.items()
    }
    uuid_of = {
        key: uuid for key, uuid in named.uuid_of.items() if uuid is not None and key not in not_run
    }
    return CheckScope(list(keys), uuid_of, not_run, named.titles)


def night_metadata(scope: CheckScope, check: ReportCheck) -> dict[str, Any]:
    """The nightly check's verdict: the courses to run, and those that need none, with why.

    A key naming no course at all (its partition retired at the next check) needs a run: the
    run says why it fails."""
    changed = [
        key
        for key in scope.keys
        if key not in scope.not_run
        and (key not in scope.uuid_of or scope.uuid_of[key] in check.changed)
    ]
    unchanged = {key for key, uuid in scope.uuid_of.items() if uuid in check.unchanged}
    not_run = [
        {
            "partition_key": key,
            fact_names.COURSE_UUID: uuid,
            fact_names.COURSE_TITLE: scope.titles.get(uuid, ""),
            fact_names.STATUS: status,
            fact_names.NOTE: note,
        }
        for key in scope.keys
        for uuid, status, note in [
            scope.not_run.get(key)
            or (scope.uuid_of.get(key, ""), fact_names.STATUS_UNCHANGED, UNCHANGED_NOTE)
        ]
        if key in scope.not_run or key in unchanged
    ]
    return {
        CHECKED_COURSES: len(scope.uuid_of),
        CHANGED_COURSES: dg.MetadataValue.json(changed),
        COURSES_NOT_RUN: dg.MetadataValue.json(not_run),
    }


def checked_progress(not_run: list[dict[str, Any]]) -> dg.AssetMaterialization:
    """A materialisation of `activity_progress` for the courses the nightly check found nothing
    to do for: their progress is as current as the check (what its freshness policy reads; a
    night of unchanged courses is not late). It names no partition: no course was written."""
    by_status: dict[str, int] = {}
    for course in not_run:
        by_status[course[fact_names.STATUS]] = by_status.get(course[fact_names.STATUS], 0) + 1
    return dg.AssetMaterialization(
        asset_key="activity_progress",
        description="Checked by the nightly check: nothing to apply for these courses",
        metadata={
            COURSES_CHECKED_CURRENT: len(not_run),
            **{f"courses_{status.replace(' ', '_')}": n for status, n in sorted(by_status.items())},
        },
    )


def changed_courses(instance: dg.DagsterInstance, check_run_id: str) -> list[str]:
    """The course partitions a check run found changed, from its course_runs materialisation."""
    records = instance.get_records_for_run(
        check_run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey("course_runs"):
            listed = materialization.metadata.get(CHANGED_COURSES)
            return list(listed.value) if listed is not None else []  # type: ignore[arg-type]
    return []


def checked_tonight(run_tags: Mapping[str, str]) -> bool:
    """Whether a run is one the night's check launched (not one re-executed from it later): the
    check refreshed the linking state minutes before (`courses_to_skip`)."""
    return CHECK_RUN_TAG in run_tags and PARENT_RUN_TAG not in run_tags


def found_all_changed(
    instance: dg.DagsterInstance, run_tags: Mapping[str, str], keys: Sequence[str]
) -> bool:
    """Whether the night's check that launched a run (its CHECK_RUN_TAG) found every course
    partition of `keys` changed: then none of them can be skipped as unchanged, and asking
    again (`courses_to_skip`) reads every stored link once more in each run."""
    check_run_id = run_tags.get(CHECK_RUN_TAG)
    if check_run_id is None:
        return False
    return set(keys) <= set(changed_courses(instance, check_run_id))
