"""A code location for the tick failure alert's tests: a sensor that fails while a file exists,
and the alert sensors of sync_assets, evaluated by the sensor daemon's own code in process.

No `from __future__ import annotations`: Dagster reads the sensor's context type hint as a class.
"""

import os
from pathlib import Path

import dagster as dg

from sync_assets.defs.alerts.queue import queued_run_alert_sensor
from sync_assets.defs.alerts.ticks import tick_failure_alert_sensor

FAILING = "WATCHED_LOCATION_FAILING"  # a file: while it exists the catalogue sensor fails


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def catalogue_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    if Path(os.environ[FAILING]).exists():
        # An error that quotes a learner, as a careless one might.
        raise RuntimeError("the catalogue could not be read for jane.doe@example.org\nTraceback…")
    return dg.SkipReason("nothing new")


alerts = [tick_failure_alert_sensor(), queued_run_alert_sensor()]
defs = dg.Definitions(sensors=[catalogue_sensor, *(sensor for sensor in alerts if sensor)])
