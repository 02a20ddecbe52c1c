"""The nightly schedule: every course partition in one run at 02:00 Europe/London."""

import dagster as dg

from sync_assets.defs.sync.jobs import all_partitions_tags, futurelearn_sync_job
from sync_assets.defs.sync.partitions import course_partitions


# Written by hand: build_schedule_from_partitioned_job refuses dynamic partitions.
@dg.schedule(
    job=futurelearn_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sync every known course in one run (a single-run backfill over all partitions).",
)
def nightly_futurelearn_sync(context: dg.ScheduleEvaluationContext):
    keys = list(context.instance.get_dynamic_partitions(course_partitions.name))
    if not keys:
        return dg.SkipReason("no course partitions yet: the course_partitions sensor adds them")
    return dg.RunRequest(
        run_key=context.scheduled_execution_time.isoformat(),
        tags=all_partitions_tags(keys),
    )
