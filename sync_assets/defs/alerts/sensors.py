"""The run failure alert: one webhook POST per failed run of this code location's jobs.

A plain sensor with a cursor of its own over the event log's RUN_FAILURE records (storage ids
only grow), rather than `@run_failure_sensor`: the cursor is ours to advance one delivered alert
at a time, so a webhook that is down delays alerts instead of losing them, and each failure is
posted once (at least once if the process dies between a POST and the tick's end).

A run the daemon will retry (`dagster/will_retry`: its process died) raises no alert: its retry
does, if it fails too (the retry is tagged as Dagster decides for it, not as its parent was).

Defined only when SYNC_ASSETS_ALERT_WEBHOOK_URL is set; the URL is read from the environment
when a tick posts, never from run config, and appears in no log line, skip reason or metadata.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import dagster as dg

from sync_assets.alerts import AlertNotDelivered, FailedRun, failure_alert, post_alert
from sync_assets.defs.certificates.jobs import certificate_job, daily_certificates_job
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.sync.jobs import futurelearn_sync_job
from sync_assets.settings import alert_settings
from sync_assets.sync import fact_names
from sync_assets.wording import counted

ALERTS_PER_TICK = 20
WILL_RETRY_TAG = "dagster/will_retry"
# Dagster tags a failed run will_retry just after storing its failure: a failure younger than
# this without the tag waits for the next tick; an older one is taken as not retried.
RETRY_DECISION_SECONDS = 60
# Runs of these jobs, and of the UI's ad hoc asset jobs (Materialize…), are this location's.
OUR_JOBS = frozenset(
    job.name
    for job in (futurelearn_sync_job, certificate_job, daily_certificates_job, resync_learners_job)
)


def is_ours(job_name: str) -> bool:
    return job_name in OUR_JOBS or job_name.startswith("__ASSET_JOB")


def failed_run(instance: dg.DagsterInstance, run_id: str) -> FailedRun | None:
    """The failed steps and courses of a run and why, from its event log."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    steps: list[str] = []
    courses: dict[str, str] = {}
    step_errors: list[str] = []
    run_error = ""
    failed_at = None
    for entry in instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    ):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.job_failure_data
            run_error = (data.error.message if data and data.error else event.message) or ""
            failed_at = _iso(entry.timestamp)
            continue
        steps.append(event.step_key or "")
        failure = event.step_failure_data
        user = failure.user_failure_data
        if user is not None:
            listed = user.metadata.get(fact_names.FAILED_COURSES)
            if listed is not None and isinstance(listed.value, dict):
                courses.update({str(key): str(why) for key, why in listed.value.items()})
            step_errors.append(user.description or "")
        elif failure.error is not None:
            step_errors.append(failure.error.message.strip().splitlines()[0])
    return FailedRun(
        run_id=run_id,
        job=run.job_name,
        failed_steps=steps,
        failed_courses=courses,
        error="; ".join(error for error in step_errors if error) or run_error,
        failed_at=failed_at,
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _latest_failure_id(instance: dg.DagsterInstance) -> int:
    newest = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1)
    return newest.records[0].storage_id if newest.records else 0


def _will_retry(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> bool | None:
    """Whether the daemon will retry this failed run; None while Dagster has not said yet."""
    run = instance.get_run_by_id(record.run_id)
    tag = None if run is None else run.tags.get(WILL_RETRY_TAG)
    if tag is not None:
        return tag == "true"
    if instance.run_retries_enabled and time.time() - record.timestamp < RETRY_DECISION_SECONDS:
        return None
    return False


def run_failure_alert_sensor() -> dg.SensorDefinition | None:
    """The sensor, or None (not defined) when no webhook is configured."""
    if alert_settings() is None:
        return None

    @dg.sensor(
        name="run_failure_alert_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="POST a JSON alert to SYNC_ASSETS_ALERT_WEBHOOK_URL for each failed run of "
        "this code location's jobs: the job, the run, the failed steps and courses and why, "
        "and a link to the run (SYNC_ASSETS_UI_URL). Failures from before the sensor first ran "
        "are not sent; an alert the webhook refuses is tried again on the next tick.",
    )
    def alert_on_run_failures(context: dg.SensorEvaluationContext):
        settings = alert_settings()
        if settings is None:  # unset since the code location loaded
            return dg.SkipReason("SYNC_ASSETS_ALERT_WEBHOOK_URL is not set")
        if context.cursor is None:
            after = _latest_failure_id(context.instance)
            return dg.SensorResult(
                skip_reason=f"watching for run failures after event #{after}",
                cursor=json.dumps({"after": after}),
            )
        after = json.loads(context.cursor)["after"]
        since = dg.RunStatusChangeRecordsFilter(
            dg.DagsterEventType.RUN_FAILURE, after_storage_id=after
        )
        failures = context.instance.fetch_run_status_changes(
            since, limit=ALERTS_PER_TICK, ascending=True
        ).records
        sent = 0
        problem = None
        for record in failures:
            retry = _will_retry(context.instance, record)
            if retry is None:
                problem = f"waiting for Dagster to decide whether run {record.run_id} is retried"
                break
            run = None if retry else failed_run(context.instance, record.run_id)
            if run is not None and is_ours(run.job):
                try:
                    post_alert(settings.webhook_url, failure_alert(run, settings.ui_url))
                except AlertNotDelivered as error:
                    problem = f"alert for run {run.run_id} not delivered: {error}"
                    context.log.error(f"{problem}; it is tried again on the next tick")
                    break
                sent += 1
            after = record.storage_id
        reason = problem or f"{counted(sent, 'failure alert')} sent"
        return dg.SensorResult(skip_reason=reason, cursor=json.dumps({"after": after}))

    return alert_on_run_failures
