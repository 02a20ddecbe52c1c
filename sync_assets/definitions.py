"""The `sync_assets` code location: what `dg dev`, `dg check defs` and a code server load.

Every setting is checked as the code location loads, so a bad or (in a deployment) missing
one stops the load with one line naming it, instead of failing a run at 02:00.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from sync_assets.defs.alerts.queue import queued_run_alert_sensor
from sync_assets.defs.alerts.sensors import run_failure_alert_sensor
from sync_assets.defs.alerts.ticks import tick_failure_alert_sensor
from sync_assets.defs.certificates.jobs import certificate_job, daily_certificates_job
from sync_assets.defs.certificates.schedules import daily_certificates
from sync_assets.defs.certificates.sensors import completion_events_sensor
from sync_assets.defs.explain.jobs import explain_learner_job
from sync_assets.defs.op_outputs import JsonOpOutputIOManager
from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.retention.jobs import prune_run_history_job
from sync_assets.defs.retention.schedules import weekly_prune
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.assets import configured, sync_assets_list
from sync_assets.defs.sync.jobs import futurelearn_check_job, futurelearn_sync_job
from sync_assets.defs.sync.night import changed_courses_sensor
from sync_assets.defs.sync.schedules import nightly_futurelearn_sync
from sync_assets.defs.sync.sensors import course_partitions_sensor
from sync_assets.settings import check_settings, git_code_references

check_settings()

# Dagster hands the event log an output's per-partition materialisations (a sync step's: one per
# course of its run) as one batch when this is set. PostgreSQL storage (deploy/dagster.yaml)
# then writes them in one INSERT and one index transaction instead of two transactions each
# (benchmarks/partition_events.py: a run of 4 steps over 27 courses, 0.57 of the wall, half the
# statements); SQLite storage still writes them one by one. The same events are stored, with the
# same per-partition metadata. Set here because every process that executes our runs loads this
# module (`sync-assets`, and the run workers of a code server); a deployment's own value wins.
EVENT_BATCH_SIZE = 1000
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))


def _resources() -> dict[str, object]:
    """The same in both profiles: where each connects, and what it signs with, is read from the
    environment when used (each one's description names its variables) and is no config field,
    so no run config (Launchpad, GraphQL, `dagster job execute -c`) can point a run elsewhere.
    """
    return {
        "platform_database": PlatformDatabase(),
        "partners_api": PartnersApi(),
        "io_manager": PartitionedParquetIOManager(),
        # Op outputs (certificate, resync, explain jobs) beside the assets as JSON, so a
        # re-execution in another container finds them and reads them as data, not pickle.
        "op_io_manager": JsonOpOutputIOManager(),
    }


CODE_REFERENCES_BETA = (
    r"(Function `(with_source_code_references|link_code_references_to_git)`|Class "
    r"`(LocalFileCodeReference|UrlCodeReference|CodeReferencesMetadataValue|"
    r"AnchorBasedFilePathMapping)`) is currently in beta"
)
SENSOR_OWNERS_BETA = (
    r"Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta"
)


def with_code_references(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Each asset with a link to its code: on GitHub or GitLab when SYNC_ASSETS_GIT_URL and
    SYNC_ASSETS_GIT_BRANCH say where this code is, else to the file on this machine.

    Paths are mapped from this file, so they are right in a checkout and in an installed wheel
    alike (the repository is assumed to have `sync_assets/` at its root, as this project does).
    """
    with warnings.catch_warnings():
        # Beta in Dagster 1.13: both helpers and the classes they build; nothing else is hidden.
        warnings.filterwarnings("ignore", message=CODE_REFERENCES_BETA, category=dg.BetaWarning)
        referenced = dg.with_source_code_references(assets)
        git = git_code_references()
        if git is not None:
            referenced = dg.link_code_references_to_git(
                referenced,
                git_url=git.url,
                git_branch=git.branch,
                file_path_mapping=dg.AnchorBasedFilePathMapping(
                    local_file_anchor=Path(__file__),
                    file_anchor_path_in_repository="sync_assets/definitions.py",
                ),
            )
    return list(referenced)  # type: ignore[arg-type]


def build_definitions() -> dg.Definitions:
    """The code location as the environment configures it (read again by tests that change it)."""
    alerts = [run_failure_alert_sensor(), tick_failure_alert_sensor(), queued_run_alert_sensor()]
    defs = dg.Definitions(
        assets=with_code_references(configured(sync_assets_list)),
        jobs=[
            futurelearn_check_job,
            futurelearn_sync_job,
            certificate_job,
            daily_certificates_job,
            resync_learners_job,
            explain_learner_job,
            prune_run_history_job,
        ],
        schedules=[nightly_futurelearn_sync, daily_certificates, weekly_prune],
        sensors=[
            course_partitions_sensor,
            changed_courses_sensor,
            completion_events_sensor,
            *(sensor for sensor in alerts if sensor is not None),
        ],
        resources=_resources(),
    )
    # Resolved here, once (Dagster caches it): binding the resources to the sensors' jobs copies
    # each sensor with `owners=[]`, which Dagster 1.13 reports as a use of its beta parameter.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SENSOR_OWNERS_BETA, category=dg.BetaWarning)
        defs.get_repository_def()
    return defs


defs = build_definitions()
