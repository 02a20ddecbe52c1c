"""Adds a course partition for each known course (R1) that appears in the Partners API."""

from dataclasses import dataclass

import dagster as dg

from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.assets import partitioned_sync_assets, sync_assets_list
from sync_assets.defs.sync.partitions import (
    CourseKeys,
    PartitionChanges,
    course_partitions,
    is_bare_uuid,
    partition_changes,
)
from sync_assets.partners_api.client import run
from sync_assets.sync import steps
from sync_assets.wording import counted

# The partitioned assets whose stored values follow a partition to its new key.
PARTITIONED_ASSETS = partitioned_sync_assets(sync_assets_list)


@dataclass(frozen=True)
class PartitionUpdate:
    changes: PartitionChanges
    titles: dict[str, str]  # every course FutureLearn lists (uuid) → its title now
    known: frozenset[str]  # the courses the platform knows (R1)

    def course_keys(self, keys: list[str]) -> CourseKeys:
        return CourseKeys.resolve(keys, self.titles, self.known)

    def describe(self) -> str:
        added = len(self.changes.add) - len(self.changes.replace)
        parts = [f"{counted(added, 'course partition')} added"] if added else []
        if self.changes.replace:
            replaced = counted(len(self.changes.replace), "bare-uuid partition")
            parts.append(f"{replaced} given readable keys")
        return "; ".join(parts) or "nothing to change"


def plan_partition_update(
    existing: list[str], partners_api: PartnersApi, platform_database: PlatformDatabase
) -> PartitionUpdate:
    """What the course partitions lack: one per known course with runs, each with a readable key."""

    async def fetch():
        async with partners_api.client() as client:
            return await steps.fetch_course_runs(client, platform_database.engine)

    fetched = run(fetch())
    titles = steps.course_titles(fetched.runs)
    changes = partition_changes(
        existing, fetched.known_course_uuids(), titles, set(fetched.runs["course_uuid"])
    )
    return PartitionUpdate(changes, titles, frozenset(fetched.known_course_uuids()))


def apply_partition_update(
    instance: dg.DagsterInstance, update: PartitionUpdate, io_manager: PartitionedParquetIOManager
) -> None:
    """Add the new keys; move bare-uuid partitions to theirs, stored values and all.

    Each stored value is copied and recorded as materialised under the new key, so the
    partitions view shows what is stored, with where it came from; then the old partition is
    deleted, and after it the objects under its key (nothing stored is lost if this stops
    half-way; it is idempotent, so the next evaluation finishes it). Those objects are learners'
    data no partition names any more: left, they would outlive every erasure on the platform.
    """
    changes = update.changes
    if changes.add:
        instance.add_dynamic_partitions(course_partitions.name, sorted(changes.add))
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


@dg.sensor(
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Add a partition for every known course with runs on FutureLearn (a 304 when "
    "nothing changed), keyed by its title's slug and the start of its uuid; partitions keyed "
    "by a bare uuid (earlier versions) get readable keys, their stored values moved over.",
)
def course_partitions_sensor(
    context: dg.SensorEvaluationContext,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
    io_manager: dg.ResourceParam[PartitionedParquetIOManager],
):
    existing = list(context.instance.get_dynamic_partitions(course_partitions.name))
    update = plan_partition_update(existing, partners_api, platform_database)
    apply_partition_update(context.instance, update, io_manager)  # also removes retired objects
    if not update.changes.add and not update.changes.replace:
        return dg.SkipReason(f"all {len(existing)} known courses have partitions")
    context.log.info(update.describe())
    return dg.SkipReason(update.describe())
