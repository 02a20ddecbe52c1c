"""The course partitions follow the known courses (R1): added, with a run, as a course appears;
retired as the platform stops knowing one; kept while a known course is withdrawn."""

from dataclasses import dataclass

import dagster as dg

from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.assets import partitioned_sync_assets, sync_assets_list
from sync_assets.defs.sync.jobs import all_partitions_tags, futurelearn_sync_job
from sync_assets.defs.sync.partitions import (
    CourseKeys,
    PartitionChanges,
    course_chunks,
    course_partitions,
    is_bare_uuid,
    partition_changes,
)
from sync_assets.partners_api.client import run
from sync_assets.settings import courses_per_run
from sync_assets.sync import steps
from sync_assets.wording import counted

NOTHING_TO_CHANGE = "nothing to change"
# The partitioned assets whose stored values follow a partition to its new key.
PARTITIONED_ASSETS = partitioned_sync_assets(sync_assets_list)


@dataclass(frozen=True)
class PartitionUpdate:
    changes: PartitionChanges
    titles: dict[str, str]  # every course FutureLearn lists (uuid) → its title now
    known: frozenset[str]  # every course the platform knows (R1), listed or not

    def course_keys(self, keys: list[str]) -> CourseKeys:
        return CourseKeys.resolve(keys, self.titles.keys() | self.known, self.known)

    def describe(self) -> str:
        parts = []
        if self.changes.new_courses:
            parts.append(f"{counted(len(self.changes.new_courses), 'course partition')} added")
        if self.changes.replace:
            replaced = counted(len(self.changes.replace), "bare-uuid partition")
            parts.append(f"{replaced} given readable keys")
        if self.changes.retire:
            retired = counted(len(self.changes.retire), "course partition")
            parts.append(
                f"{retired} retired, its course no longer known to the platform (R1; history "
                f"kept, stored values removed): {', '.join(self.changes.retire)}"
            )
        return "; ".join(parts) or NOTHING_TO_CHANGE


def plan_partition_update(
    existing: list[str], partners_api: PartnersApi, platform_database: PlatformDatabase
) -> PartitionUpdate:
    """What the course partitions lack or have too many of: one per known course with runs,
    each with a readable key; none for a course no longer known."""

    async def fetch():
        async with partners_api.client() as client:
            return await steps.fetch_course_runs(client, platform_database.engine)

    fetched = run(fetch())
    titles = steps.course_titles(fetched.runs)
    changes = partition_changes(existing, fetched.known, titles, set(fetched.runs["course_uuid"]))
    return PartitionUpdate(changes, titles, frozenset(fetched.known))


def apply_partition_update(
    instance: dg.DagsterInstance, update: PartitionUpdate, io_manager: PartitionedParquetIOManager
) -> None:
    """Everything at once, on the instance (`sync-assets sync`): add, migrate, retire."""
    if update.changes.new_courses:
        instance.add_dynamic_partitions(course_partitions.name, sorted(update.changes.new_courses))
    migrate_bare_uuid_partitions(instance, update, io_manager)
    remove_retired_objects(update, io_manager)
    for key in update.changes.retire:
        instance.delete_dynamic_partition(course_partitions.name, key)


def remove_retired_objects(
    update: PartitionUpdate, io_manager: PartitionedParquetIOManager
) -> None:
    """Delete what is stored under each retired key, before the partition itself goes: learners'
    data no partition names would outlive every erasure on the platform. Idempotent, so a
    retirement cut short is finished by the next check (the partition is still there)."""
    for key in update.changes.retire:
        for asset_key in PARTITIONED_ASSETS:
            io_manager.delete_partition(asset_key, key)


def migrate_bare_uuid_partitions(
    instance: dg.DagsterInstance, update: PartitionUpdate, io_manager: PartitionedParquetIOManager
) -> None:
    """Move bare-uuid partitions to their readable keys, stored values and all.

    Each stored value is copied and recorded as materialised under the new key, so the
    partitions view shows what is stored, with where it came from; then the old partition is
    deleted, and after it the objects under its key (nothing stored is lost if this stops
    half-way; it is idempotent, so the next evaluation finishes it). Those objects are learners'
    data no partition names any more: left, they would outlive every erasure on the platform.
    """
    changes = update.changes
    migrated = sorted(key for key in changes.add if key not in changes.new_courses)
    if migrated:
        instance.add_dynamic_partitions(course_partitions.name, migrated)
    for old_key, new_key in sorted(changes.replace.items()):
        for asset_key in PARTITIONED_ASSETS:
            if not io_manager.copy_partition(asset_key, old_key, new_key):
                continue
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=asset_key,
                    partition=new_key,
                    description=f"Migrated from the partition keyed by the bare uuid {old_key}",
                    metadata={
                        "migrated_from_partition": old_key,
                        "course_uuid": old_key.lower(),
                        "course_title": update.titles.get(old_key.lower(), ""),
                    },
                )
            )
        instance.delete_dynamic_partition(course_partitions.name, old_key)
    remove_retired_bare_uuid_objects(instance, io_manager)


def remove_retired_bare_uuid_objects(
    instance: dg.DagsterInstance, io_manager: PartitionedParquetIOManager
) -> None:
    """Delete objects stored under bare-uuid keys no partition has any more: what a migration by
    an earlier release (which copied and never deleted) or one cut short left behind. Only bare
    uuids: no release makes such keys now, so a partition being added meanwhile is never one."""
    partitions = set(instance.get_dynamic_partitions(course_partitions.name))
    for asset_key in PARTITIONED_ASSETS:
        for key in io_manager.stored_partitions(asset_key):
            if is_bare_uuid(key) and key not in partitions:
                io_manager.delete_partition(asset_key, key)


def new_course_runs(added: list[str], generation: int) -> list[dg.RunRequest]:
    """A sync run for the newly added course partitions, in chunks of SYNC_ASSETS_COURSES_PER_RUN.

    Added keys are appended to the dynamic partitions, so they are consecutive: a chunk is one
    partition range. The run key names this addition (`generation`, the sensor's count of
    additions), so a re-evaluated tick launches nothing twice, and a course retired and added
    again later still gets its run.
    """
    chunks = course_chunks(sorted(added), courses_per_run())
    return [
        dg.RunRequest(
            run_key=f"new-courses-{generation}/{number}-of-{len(chunks)}",
            job_name=futurelearn_sync_job.name,
            tags={**all_partitions_tags(chunk), "sync_assets/chunk": f"{number} of {len(chunks)}"},
        )
        for number, chunk in enumerate(chunks, start=1)
    ]


@dg.sensor(
    job=futurelearn_sync_job,
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keep a partition for every known course (R1), checked hourly (a 304 when "
    "nothing changed): a course newly known with runs on FutureLearn gets one, keyed by its "
    "title's slug and the start of its uuid, and is synced at once; a course the platform no "
    "longer knows has its partition retired (its history kept, its stored values removed); a "
    "withdrawn course (known, no runs listed) keeps its partition. Partitions keyed by a bare "
    "uuid (earlier versions) get readable keys, their stored values moved over.",
)
def course_partitions_sensor(
    context: dg.SensorEvaluationContext,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
    io_manager: dg.ResourceParam[PartitionedParquetIOManager],
):
    existing = list(context.instance.get_dynamic_partitions(course_partitions.name))
    update = plan_partition_update(existing, partners_api, platform_database)
    changes = update.changes
    # The migration copies stored values, so it changes the instance itself, as it goes.
    migrate_bare_uuid_partitions(context.instance, update, io_manager)
    remove_retired_objects(update, io_manager)
    if not changes.new_courses and not changes.replace and not changes.retire:
        return dg.SkipReason(f"all {len(existing)} known courses have partitions")
    context.log.info(update.describe())
    if not changes.new_courses and not changes.retire:
        return dg.SkipReason(update.describe())  # a migration only: done already
    # Added and retired by the daemon when it takes this result (before it launches the runs).
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if changes.new_courses:
        requests.append(course_partitions.build_add_request(sorted(changes.new_courses)))
    if changes.retire:
        requests.append(course_partitions.build_delete_request(changes.retire))
    generation = int(context.cursor or 0) + (1 if changes.new_courses else 0)
    return dg.SensorResult(
        run_requests=new_course_runs(list(changes.new_courses), generation),
        dynamic_partitions_requests=requests,
        cursor=str(generation),
        skip_reason=None if changes.new_courses else update.describe(),
    )
