"""A code location for the tick failure alert's tests: a sensor and a schedule that fail while a
file of their name exists, and the alert sensors of sync_assets, evaluated by the sensor and
schedule daemons' own code in process.

No `from __future__ import annotations`: Dagster reads the context type hints as classes.
"""

import os
from pathlib import Path

import dagster as dg

from sync_assets.defs.alerts.queue import queued_run_alert_sensor
from sync_assets.defs.alerts.ticks import tick_failure_alert_sensor

FAILING = "WATCHED_LOCATION_FAILING"  # a folder: while it holds a file named after one, it fails


def _fail_if_told(name: str) -> None:
    if (Path(os.environ[FAILING]) / name).exists():
        # An error that quotes a learner, as a careless one might.
        raise RuntimeError("the catalogue could not be read for jane.doe@example.org\nTraceback…")


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def catalogue_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    _fail_if_told(context.sensor_name)
    return dg.SkipReason("nothing new")


@dg.op
def nothing() -> None:
    pass


@dg.job
def nothing_job() -> None:
    nothing()


@dg.schedule(
    job=nothing_job, cron_schedule="* * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
def catalogue_schedule(context: dg.ScheduleEvaluationContext) -> dg.SkipReason:
    _fail_if_told("catalogue_schedule")
    return dg.SkipReason("nothing to run")


alerts = [tick_failure_alert_sensor(), queued_run_alert_sensor()]
defs = dg.Definitions(
    jobs=[nothing_job],
    schedules=[catalogue_schedule],
    sensors=[catalogue_sensor, *(sensor for sensor in alerts if sensor)],
)
