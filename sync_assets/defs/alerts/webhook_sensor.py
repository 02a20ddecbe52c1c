"""What the alert sensors share: defined only when a webhook is configured, running by default,
and reading the webhook from the environment at each tick (never from run config)."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from sync_assets.settings import AlertSettings, alert_settings

Evaluation = Callable[[dg.SensorEvaluationContext, AlertSettings], dg.SensorResult | dg.SkipReason]


def webhook_sensor(
    name: str, minimum_interval_seconds: int, description: str, evaluate: Evaluation
) -> dg.SensorDefinition | None:
    """The sensor `evaluate` makes, or None (not defined) when no webhook is configured."""
    if alert_settings() is None:
        return None

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def alert_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        settings = alert_settings()
        if settings is None:  # unset since the code location loaded
            return dg.SkipReason("SYNC_ASSETS_ALERT_WEBHOOK_URL is not set")
        return evaluate(context, settings)

    return alert_sensor
