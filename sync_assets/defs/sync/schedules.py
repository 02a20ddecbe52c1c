"""The nightly schedule: every course partition, in runs of bounded size, at 02:00 London."""

import dagster as dg

from sync_assets.defs.sync.jobs import all_partitions_tags, futurelearn_sync_job
from sync_assets.defs.sync.partitions import course_chunks, course_partitions
from sync_assets.settings import courses_per_run


# Written by hand: build_schedule_from_partitioned_job refuses dynamic partitions.
@dg.schedule(
    job=futurelearn_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sync every known course: one run per SYNC_ASSETS_COURSES_PER_RUN courses "
    "(default: all in one run). The runs wait in the queue for the partners_api and platform_db "
    "pools.",
)
def nightly_futurelearn_sync(context: dg.ScheduleEvaluationContext):
    keys = list(context.instance.get_dynamic_partitions(course_partitions.name))
    if not keys:
        return dg.SkipReason("no course partitions yet: the course_partitions sensor adds them")
    chunks = course_chunks(keys, courses_per_run())
    tick = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(
            # One key per chunk and tick: a re-evaluated tick launches nothing twice.
            run_key=tick if len(chunks) == 1 else f"{tick}/{number}-of-{len(chunks)}",
            tags={
                **all_partitions_tags(chunk),
                "sync_assets/chunk": f"{number} of {len(chunks)}",
            },
        )
        for number, chunk in enumerate(chunks, start=1)
    ]
