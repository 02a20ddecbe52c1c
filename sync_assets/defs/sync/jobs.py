"""The sync job: all five assets in one process (steps run one after another anyway)."""

from __future__ import annotations

import dagster as dg

from sync_assets.defs.retries import NO_RUN_RETRY_ON_STEP_FAILURE
from sync_assets.defs.sync.assets import course_runs, sync_assets_list
from sync_assets.defs.sync.changes import CHECK_JOB

# A night with a refused course fails its run once (the daemon's run retry is for a run whose
# process died); a transient database error retries the step (defs/retries.py).
NIGHTLY_SYNC_TAGS = {"sync_assets/kind": "nightly-sync", **NO_RUN_RETRY_ON_STEP_FAILURE}

# In process: each step of the multiprocess executor costs seconds to start, and these five run
# in sequence; the fan-out that matters (API requests) is inside the steps.
futurelearn_sync_job = dg.define_asset_job(
    "futurelearn_sync",
    selection=dg.AssetSelection.assets(*sync_assets_list),
    executor_def=dg.in_process_executor,
    tags=NIGHTLY_SYNC_TAGS,
    description="Both steps of the sync for the selected course partitions (all, nightly).",
)


# The night's first run: `course_runs` alone checks every course partition; the sensor
# changed_courses_sensor then launches futurelearn_sync for the courses that changed, only.
futurelearn_check_job = dg.define_asset_job(
    CHECK_JOB,
    selection=dg.AssetSelection.assets(course_runs),
    executor_def=dg.in_process_executor,
    tags={"sync_assets/kind": "nightly-check", **NO_RUN_RETRY_ON_STEP_FAILURE},
    description="The night's check: every course run and every known course's enrolment reports "
    "(conditional requests), and which courses changed since their last sync (reports or "
    "platform side). The sensor changed_courses_sensor launches futurelearn_sync for those "
    "only: a course that did not change gets no run and no event of its own; course_runs lists "
    "it (courses_not_run) and activity_progress records that it is current.",
)


def all_partitions_tags(partition_keys: list[str]) -> dict[str, str]:
    """Tags that make one run cover every course partition (a single-run backfill)."""
    return {
        "dagster/asset_partition_range_start": partition_keys[0],
        "dagster/asset_partition_range_end": partition_keys[-1],
    }
