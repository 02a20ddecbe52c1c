"""The weekly prune of run history older than SYNC_ASSETS_RETENTION_DAYS (see retention.py)."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from sync_assets.defs.sync.assets import sync_assets_list
from sync_assets.retention import prune
from sync_assets.settings import retention_days


def sync_check_keys() -> list[dg.AssetCheckKey]:
    """The asset checks whose latest evaluation is kept (the sync assets' own)."""
    return [key for asset in sync_assets_list for key in asset.check_keys]


@dg.op(
    description="Delete runs finished more than SYNC_ASSETS_RETENTION_DAYS days ago, with their "
    "event logs, compute logs and op outputs; never a partition's latest materialisation.",
    out=dg.Out(dg.Nothing),
)
def prune_old_runs(context: dg.OpExecutionContext) -> dg.Output[None]:
    days = retention_days()
    report = prune(context.instance, timedelta(days=days), datetime.now(UTC), sync_check_keys())
    context.log.info(report.summary())
    return dg.Output(
        None,
        metadata={
            "retention_days": days,
            "runs_deleted": len(report.run_ids),
            "events_deleted": report.events,
            "op_outputs_deleted": report.op_outputs,
            "older_runs_kept": report.kept_latest,
        },
    )


@dg.job(
    name="prune_run_history",
    description="Prune run history older than SYNC_ASSETS_RETENTION_DAYS (default 90) days.",
    tags={"sync_assets/kind": "retention"},
)
def prune_run_history_job() -> None:
    prune_old_runs()
