"""C2 every day, after the nightly sync has had its time."""

import dagster as dg

from sync_assets.defs.certificates.jobs import daily_certificates_job

daily_certificates = dg.ScheduleDefinition(
    name="daily_certificates",
    job=daily_certificates_job,
    cron_schedule="0 4 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Handle any completion event still pending, then issue due certificates (C2).",
)
