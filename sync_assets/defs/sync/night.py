"""A night costs what changed: the check run, then sync runs for the changed courses only.

The schedule (and `sync-assets sync`) starts the night with `futurelearn_check`, which lists
in `course_runs`' materialisation which courses changed; `changed_courses_sensor` reads that
and launches `futurelearn_sync` over them, in ranges of consecutive partitions
(`partitions.changed_ranges`). The sync runs select the partitioned assets only: `course_runs`
is the check's (stored), with each report's digest, so no report is asked for twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from sync_assets.defs.sync.assets import partitioned_sync_assets, sync_assets_list
from sync_assets.defs.sync.changes import changed_courses
from sync_assets.defs.sync.jobs import (
    all_partitions_tags,
    futurelearn_check_job,
    futurelearn_sync_job,
)
from sync_assets.defs.sync.partitions import (
    changed_ranges,
    course_partitions,
    overlapping_chunk,
)
from sync_assets.defs.sync.provenance import CHECK_RUN_TAG
from sync_assets.settings import courses_per_run

# What a run for changed courses executes: everything but course_runs (the check's).
PER_COURSE_ASSETS = partitioned_sync_assets(sync_assets_list)
# Overlapping runs hand off after it: the next run starts once the one before has read its
# reports. Its linking then waits for the one before's (STEPS_IN_TURN), so no two runs look up
# memberships at once; its enrolments come from the check's cache (a report asked for again,
# one the check stored and cannot be read, is the only request it may make beside them).
HANDOFF_STEP = "enrolments"
# On a check run whose sync runs its launcher makes itself (`sync-assets sync`): the sensor
# leaves it alone, or the changed courses would be synced twice.
FOLLOWED_BY_TAG = "sync_assets/followed_by"
FOLLOWED_BY_COMMAND = "sync-assets sync"


def runs_overlap(changed: int) -> bool:
    """Whether `sync-assets sync` executes the runs of a night of `changed` courses overlapping
    (runs/execution.py): only runs cut to a size, by SYNC_ASSETS_COURSES_PER_RUN or for a night
    large enough for `overlapping_chunk`. The ranges of a few scattered courses run one after
    another in the command's process: a run's child process costs ~2–4 s to start (imports),
    more than such small runs could overlap."""
    return courses_per_run() is not None or overlapping_chunk(changed) is not None


def changed_course_run_tags(
    partition_keys: Sequence[str],
    changed: Sequence[str],
    check_run_id: str,
    *,
    overlapping: bool = False,
) -> list[dict[str, str]]:
    """One run's tags per range of changed courses (see `changed_ranges`), cut into chunks of
    SYNC_ASSETS_COURSES_PER_RUN, or for `overlapping` runs (`overlapping_chunk`) when unset."""
    per_run = courses_per_run()
    if per_run is None and overlapping:
        per_run = overlapping_chunk(len(changed))
    ranges = changed_ranges(partition_keys, set(changed), per_run)
    return [
        {
            **all_partitions_tags(keys),
            CHECK_RUN_TAG: check_run_id,
            "sync_assets/chunk": f"{number} of {len(ranges)}",
        }
        for number, keys in enumerate(ranges, start=1)
    ]


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[futurelearn_check_job],
    request_job=futurelearn_sync_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After each successful futurelearn_check run, launches futurelearn_sync for the "
    "courses it found changed (ranges of consecutive course partitions, at most "
    "SYNC_ASSETS_COURSES_PER_RUN courses a run), and nothing when none changed.",
)
def changed_courses_sensor(context: dg.RunStatusSensorContext):
    check_run_id = context.dagster_run.run_id
    if context.dagster_run.tags.get(FOLLOWED_BY_TAG) == FOLLOWED_BY_COMMAND:
        yield dg.SkipReason(f"run {check_run_id}: {FOLLOWED_BY_COMMAND} syncs its changed courses")
        return
    keys = list(context.instance.get_dynamic_partitions(course_partitions.name))
    tags = changed_course_run_tags(
        keys, changed_courses(context.instance, check_run_id), check_run_id
    )
    if not tags:
        yield dg.SkipReason(f"run {check_run_id}: no course changed since its last sync")
        return
    for number, run_tags in enumerate(tags, start=1):
        yield dg.RunRequest(
            # One key per check run and range: a re-evaluated tick launches nothing twice.
            run_key=f"{check_run_id}/{number}-of-{len(tags)}",
            asset_selection=PER_COURSE_ASSETS,
            tags=run_tags,
        )
