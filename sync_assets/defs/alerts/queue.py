"""The queued run alert: a webhook POST for each run of this code location's jobs that has waited
in the queue longer than SYNC_ASSETS_ALERT_QUEUED_MINUTES.

Its cursor holds the runs already alerted that are still queued: a run is alerted once, and
forgotten when it leaves the queue, so the cursor is bounded by the queue. A run is added to it
only once its alert is delivered, so a webhook that is down delays the alert instead of losing
it. Which runs are alerted, and what the alert says, is sync_assets/queue_alerts.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from sync_assets.alerts import AlertNotDelivered, post_alert
from sync_assets.defs.alerts.sensors import ALERTS_PER_TICK, is_ours
from sync_assets.defs.alerts.webhook_sensor import webhook_sensor
from sync_assets.queue_alerts import QueuedRun, overdue, queued_run_alert, still_queued
from sync_assets.settings import AlertSettings, alert_queued_minutes
from sync_assets.wording import counted

SENSOR_NAME = "queued_run_alert_sensor"


def queued_runs(instance: dg.DagsterInstance) -> list[QueuedRun]:
    """The runs of this location's jobs waiting in the queue."""
    records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    return [
        QueuedRun(record.dagster_run.run_id, record.dagster_run.job_name, _aware(record))
        for record in records
        if is_ours(record.dagster_run.job_name)
    ]


def _aware(record: dg.RunRecord) -> datetime:
    created = record.create_timestamp
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def alert_on_queued_runs(
    context: dg.SensorEvaluationContext, settings: AlertSettings
) -> dg.SensorResult:
    minutes = alert_queued_minutes()
    alerted = set(json.loads(context.cursor)["alerted"]) if context.cursor else set()
    queued = queued_runs(context.instance)
    alerted = still_queued(alerted, queued)
    now = datetime.now(UTC)
    sent = 0
    problem = None
    for run in overdue(queued, alerted, now, minutes)[:ALERTS_PER_TICK]:
        try:
            post_alert(settings.webhook_url, queued_run_alert(run, now, minutes, settings.ui_url))
        except AlertNotDelivered as error:
            problem = f"alert for queued run {run.run_id} not delivered: {error}"
            context.log.error(f"{problem}; it is tried again on the next tick")
            break
        alerted.add(run.run_id)
        sent += 1
    reason = problem or f"{counted(sent, 'queued run alert')} sent"
    return dg.SensorResult(skip_reason=reason, cursor=json.dumps({"alerted": sorted(alerted)}))


def queued_run_alert_sensor() -> dg.SensorDefinition | None:
    """The sensor, or None (not defined) when no webhook is configured."""
    return webhook_sensor(
        SENSOR_NAME,
        60,
        "POST a JSON alert to SYNC_ASSETS_ALERT_WEBHOOK_URL for each run of this code "
        "location's jobs queued longer than SYNC_ASSETS_ALERT_QUEUED_MINUTES (60): the job, the "
        "run, how long it has waited and a link to it (SYNC_ASSETS_UI_URL). Each run is alerted "
        "once; an alert the webhook refuses is tried again on the next tick.",
        alert_on_queued_runs,
    )
