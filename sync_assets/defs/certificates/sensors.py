"""Turns pending completion events into certificate runs, many events per run."""

import dagster as dg

from sync_assets.defs.certificates.jobs import certificate_job
from sync_assets.defs.resources import PlatformDatabase
from sync_assets.platform import certificate_store
from sync_assets.platform.sync_store import chunks

EVENTS_PER_RUN = 500
RUNS_PER_TICK = 20


def event_batch_request(event_ids: list[int]) -> dg.RunRequest:
    return dg.RunRequest(
        # Derived from the events, so a batch is launched once however often the sensor ticks.
        run_key=f"completion-events-{event_ids[0]}-{event_ids[-1]}",
        run_config={"ops": {"handle_completion_events": {"config": {"event_ids": event_ids}}}},
        tags={"sync_assets/events": str(len(event_ids))},
    )


# A plain sensor with a cursor: an asset sensor sees only the latest materialisation per tick.
@dg.sensor(
    job=certificate_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launch certificate runs for new completion events, in batches.",
)
def completion_events_sensor(
    context: dg.SensorEvaluationContext, platform_database: PlatformDatabase
):
    after = int(context.cursor or 0)
    with platform_database.engine.connect() as connection:
        pending = certificate_store.pending_event_ids(
            connection, after_id=after, limit=EVENTS_PER_RUN * RUNS_PER_TICK
        )
    if not pending:
        return dg.SkipReason(f"no completion events after #{after}")
    requests = [event_batch_request(list(batch)) for batch in chunks(pending, EVENTS_PER_RUN)]
    return dg.SensorResult(run_requests=requests, cursor=str(pending[-1]))
