"""The nightly schedule: the night's check at 02:00 London (the sync runs follow, for the
courses that changed: `night.changed_courses_sensor`)."""

import dagster as dg

from sync_assets.defs.sync.jobs import futurelearn_check_job
from sync_assets.defs.sync.partitions import course_partitions


# Written by hand: build_schedule_from_partitioned_job refuses dynamic partitions.
@dg.schedule(
    job=futurelearn_check_job,
    cron_schedule="0 2 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Check every known course at 02:00 London (futurelearn_check); the sensor "
    "changed_courses_sensor then syncs the courses that changed, in runs of at most "
    "SYNC_ASSETS_COURSES_PER_RUN courses (default: all in one run). The runs wait in the queue "
    "for the partners_api and platform_db pools.",
)
def nightly_futurelearn_sync(context: dg.ScheduleEvaluationContext):
    if not context.instance.get_dynamic_partitions(course_partitions.name):
        return dg.SkipReason("no course partitions yet: the course_partitions sensor adds them")
    # One key per tick: a re-evaluated tick launches nothing twice.
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
