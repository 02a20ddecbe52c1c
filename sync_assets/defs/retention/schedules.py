"""The weekly prune: Sunday 03:30 London, after Saturday night's sync and before certificates."""

import dagster as dg

from sync_assets.defs.retention.jobs import prune_run_history_job

weekly_prune = dg.ScheduleDefinition(
    name="weekly_prune_run_history",
    job=prune_run_history_job,
    cron_schedule="30 3 * * 0",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Delete run history older than SYNC_ASSETS_RETENTION_DAYS (default 90) days: "
    "runs, event logs, compute logs and op outputs, never a partition's latest materialisation.",
)
