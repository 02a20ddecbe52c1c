"""The `sync_assets` code location: what `dagster dev` and `dagster definitions validate` load."""

from __future__ import annotations

import dagster as dg

from sync_assets.defs.certificates.jobs import certificate_job, daily_certificates_job
from sync_assets.defs.certificates.schedules import daily_certificates
from sync_assets.defs.certificates.sensors import completion_events_sensor
from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.assets import sync_assets_list
from sync_assets.defs.sync.jobs import futurelearn_sync_job
from sync_assets.defs.sync.schedules import nightly_futurelearn_sync
from sync_assets.defs.sync.sensors import course_partitions_sensor

RESOURCES = {
    "platform_database": PlatformDatabase(),
    "partners_api": PartnersApi(),
    "io_manager": PartitionedParquetIOManager(),
    "op_io_manager": dg.FilesystemIOManager(),
}

defs = dg.Definitions(
    assets=sync_assets_list,
    jobs=[futurelearn_sync_job, certificate_job, daily_certificates_job, resync_learners_job],
    schedules=[nightly_futurelearn_sync, daily_certificates],
    sensors=[course_partitions_sensor, completion_events_sensor],
    resources=RESOURCES,
)
