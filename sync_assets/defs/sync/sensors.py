"""Adds a course partition for each known course (R1) that appears in the Partners API."""

import dagster as dg

from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.sync.partitions import course_partitions
from sync_assets.partners_api.client import run
from sync_assets.sync import steps


def missing_course_partitions(
    partners_api: PartnersApi, platform_database: PlatformDatabase, existing: set[str]
) -> list[str]:
    async def fetch():
        async with partners_api.client() as client:
            return await steps.fetch_course_runs(client, platform_database.engine)

    return [course for course in run(fetch()).known_course_uuids() if course not in existing]


@dg.sensor(
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Add a partition for every known course with runs on FutureLearn (a 304 when "
    "nothing changed).",
)
def course_partitions_sensor(
    context: dg.SensorEvaluationContext,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):
    existing = set(context.instance.get_dynamic_partitions(course_partitions.name))
    missing = missing_course_partitions(partners_api, platform_database, existing)
    if not missing:
        return dg.SkipReason(f"all {len(existing)} known courses have partitions")
    return dg.SensorResult(
        dynamic_partitions_requests=[course_partitions.build_add_request(missing)]
    )
