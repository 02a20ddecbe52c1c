"""Turns pending completion events into certificate runs, many events per run.

What to launch is chosen by state, not by a cursor: every event not yet handled, less those a
certificate run still in flight was launched for. An event left pending by a crashed or failed
run, a database outage or a sync killed before its certificate work is launched again on the
next tick. Launching an event twice is harmless (each event is applied once, under a lock, in
the same transaction as its effects); leaving one behind is not.
"""

import dagster as dg

from sync_assets.defs.certificates.jobs import certificate_job, daily_certificates_job
from sync_assets.defs.resources import PlatformDatabase
from sync_assets.platform import certificate_store
from sync_assets.platform.sync_store import chunks
from sync_assets.runs.status import IN_FLIGHT
from sync_assets.wording import counted

EVENTS_PER_RUN = 500
RUNS_PER_TICK = 20


def event_batch_request(event_ids: list[int]) -> dg.RunRequest:
    # No run key: a run key deduplicates forever, and a batch whose run failed must go again.
    return dg.RunRequest(
        run_config={"ops": {"handle_completion_events": {"config": {"event_ids": event_ids}}}},
        tags={"sync_assets/events": str(len(event_ids))},
    )


def idle_message(latest_event_id: int | None) -> str:
    """Why a tick launched nothing when no event waits: from the events table, not a cursor.

    The sensor selects by state, so "nothing waiting" right after a sync handled its own events
    must say that those were handled, not that none were ever seen.
    """
    if latest_event_id is None:
        return "no completion event yet: no achievement has become complete"
    return f"no completion event is waiting: every event up to #{latest_event_id} is handled"


def events_in_flight(instance: dg.DagsterInstance) -> set[int] | None:
    """Events named by certificate runs not yet finished; None if one of them takes every event."""
    claimed: set[int] = set()
    for job in (certificate_job, daily_certificates_job):
        for run in instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=IN_FLIGHT)):
            config = run.run_config.get("ops", {}).get("handle_completion_events", {})
            event_ids = config.get("config", {}).get("event_ids")
            if not event_ids:  # a sweep of every pending event
                return None
            claimed.update(event_ids)
    return claimed


# A plain sensor, not an asset sensor: an asset sensor sees only the latest materialisation.
@dg.sensor(
    job=certificate_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launch certificate runs for every completion event not yet handled, in batches.",
)
def completion_events_sensor(
    context: dg.SensorEvaluationContext, platform_database: PlatformDatabase
):
    claimed = events_in_flight(context.instance)
    if claimed is None:
        return dg.SkipReason("a certificate run handling every pending event is in flight")
    wanted = EVENTS_PER_RUN * RUNS_PER_TICK
    with platform_database.engine.connect() as connection:
        pending = certificate_store.pending_event_ids(connection, limit=wanted + len(claimed))
    unclaimed = [event for event in pending if event not in claimed][:wanted]
    if not unclaimed:
        if pending:
            return dg.SkipReason(
                f"{counted(len(pending), 'pending event')}, all in certificate runs in flight"
            )
        with platform_database.engine.connect() as connection:
            latest = certificate_store.latest_event_id(connection)
        return dg.SkipReason(idle_message(latest))
    return dg.SensorResult(
        run_requests=[
            event_batch_request(list(batch)) for batch in chunks(unclaimed, EVENTS_PER_RUN)
        ]
    )
