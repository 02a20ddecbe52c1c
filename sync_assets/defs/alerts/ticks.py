"""The tick failure alert: a webhook POST when a schedule or sensor of this code location fails.

Reads the instance's tick storage for each schedule and sensor of the location (its stored
instigator states name the tick keys), and keeps its own cursor: per instigator, the last tick
read and whether a streak of failures is open. The cursor advances one delivered alert at a time,
so a webhook that is down delays alerts instead of losing them; it holds one entry per
instigator of the location, so it stays small. Which ticks are alerted, and what the alert says,
is sync_assets/tick_alerts.py.

This sensor watches itself too: a tick of its own that fails is alerted by its next tick that
works. While it keeps failing, nothing is sent (its tick history in the UI is the only sign).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from sync_assets.alerts import AlertNotDelivered, post_alert
from sync_assets.defs.alerts.webhook_sensor import webhook_sensor
from sync_assets.settings import AlertSettings
from sync_assets.tick_alerts import (
    Tick,
    Watched,
    baseline,
    instigator_url,
    read_ticks,
    tick_failure_alert,
)
from sync_assets.wording import counted

SENSOR_NAME = "tick_failure_alert_sensor"
PLURAL = "schedules and sensors"
BASELINE_TICKS = 5  # enough to find the newest finished one behind a running tick


@dataclass(frozen=True)
class Instigator:
    """A schedule or sensor of this location, and the keys of its ticks in tick storage."""

    kind: str  # schedule or sensor
    name: str
    origin_id: str
    selector_id: str


def our_instigators(context: dg.SensorEvaluationContext, location: str) -> list[Instigator]:
    """The schedules and sensors of this location that have ticked: each has a stored state
    (the daemon stores one before the first tick), and the state holds the keys of its ticks."""
    repository = context.repository_def
    assert repository is not None, "the daemon evaluates a sensor with its repository"
    names = {d.name for d in repository.schedule_defs} | {d.name for d in repository.sensor_defs}
    found = []
    for state in context.instance.all_instigator_state():
        selector = state.selector
        if (
            selector.location_name == location
            and selector.repository_name == repository.name
            and state.name in names
        ):
            kind = state.instigator_type.value.lower()
            found.append(
                Instigator(kind, state.name, state.instigator_origin_id, state.selector_id)
            )
    return sorted(found, key=lambda instigator: instigator.name)


def ticks(
    instance: dg.DagsterInstance, instigator: Instigator, after: float | None, limit: int | None
) -> list[Tick]:
    """The instigator's ticks that started after `after` (all, None), newest first."""
    stored = instance.get_ticks(
        instigator.origin_id, instigator.selector_id, after=after, limit=limit
    )
    return [
        Tick(tick.tick_id, tick.timestamp, tick.status.value, _error(tick.error)) for tick in stored
    ]


def _error(error: object) -> str:
    """The first line of the innermost cause: Dagster wraps a sensor's or schedule's own error
    in one that only says which function raised."""
    message = ""
    while error is not None:
        message = getattr(error, "message", "") or message
        error = getattr(error, "cause", None)
    lines = message.strip().splitlines()
    return lines[0] if lines else ""


class Reading:
    """One evaluation's reading of the ticks: the alerts it sent, and why it stopped, if it did."""

    def __init__(
        self,
        context: dg.SensorEvaluationContext,
        settings: AlertSettings,
        location: str,
        checked_at: float,
    ) -> None:
        self.context = context
        self.settings = settings
        self.location = location
        self.checked_at = checked_at
        self.sent = 0
        self.problem: str | None = None

    def read(self, instigator: Instigator, watched: Watched | None) -> Watched:
        """Alert the new failures of `instigator`; how far its ticks are read now."""
        if watched is None:  # it appeared since the last evaluation: its ticks since then are new
            watched = Watched(timestamp=self.checked_at)
        since = watched.timestamp - 1 if watched.timestamp else None
        for step in read_ticks(watched, ticks(self.context.instance, instigator, since, None)):
            if step.alert and not self._post(instigator, step.tick):
                break
            watched = step.watched
        return watched

    def _post(self, instigator: Instigator, tick: Tick) -> bool:
        repository = self.context.repository_name or ""
        url = instigator_url(
            self.settings.ui_url, self.location, repository, instigator.kind, instigator.name
        )
        try:
            post_alert(
                self.settings.webhook_url,
                tick_failure_alert(instigator.kind, instigator.name, tick, url),
            )
        except AlertNotDelivered as error:
            self.problem = (
                f"alert for the failed tick of {instigator.kind} {instigator.name} "
                f"not delivered: {error}"
            )
            self.context.log.error(f"{self.problem}; it is tried again on the next tick")
            return False
        self.sent += 1
        return True


def alert_on_tick_failures(
    context: dg.SensorEvaluationContext, settings: AlertSettings
) -> dg.SensorResult | dg.SkipReason:
    if context.code_location_origin is None:
        return dg.SkipReason("evaluated outside the daemon: no code location to watch")
    location = context.code_location_origin.location_name
    started = time.time()
    if context.cursor is None:
        watching = {
            instigator.name: baseline(ticks(context.instance, instigator, None, BASELINE_TICKS))
            for instigator in our_instigators(context, location)
        }
        cursor = {"checked_at": started, "ticks": {n: w.as_json() for n, w in watching.items()}}
        return dg.SensorResult(
            skip_reason=f"watching {counted(len(watching), 'schedule or sensor', PLURAL)}",
            cursor=json.dumps(cursor),
        )
    state = json.loads(context.cursor)
    watching = {name: Watched.from_json(value) for name, value in state["ticks"].items()}
    reading = Reading(context, settings, location, checked_at=state["checked_at"])
    read: dict[str, Watched] = {}
    for instigator in our_instigators(context, location):
        if reading.problem is None:
            read[instigator.name] = reading.read(instigator, watching.get(instigator.name))
        elif instigator.name in watching:  # the webhook is down: read the rest next time
            read[instigator.name] = watching[instigator.name]
    checked_at = started if reading.problem is None else state["checked_at"]
    cursor = {"checked_at": checked_at, "ticks": {n: w.as_json() for n, w in read.items()}}
    reason = reading.problem or f"{counted(reading.sent, 'tick failure alert')} sent"
    return dg.SensorResult(skip_reason=reason, cursor=json.dumps(cursor))


def tick_failure_alert_sensor() -> dg.SensorDefinition | None:
    """The sensor, or None (not defined) when no webhook is configured."""
    return webhook_sensor(
        SENSOR_NAME,
        30,
        "POST a JSON alert to SYNC_ASSETS_ALERT_WEBHOOK_URL when a schedule or sensor of this "
        "code location fails a tick: the first failed tick of a streak, with its error and a "
        "link to its tick history (SYNC_ASSETS_UI_URL). Ticks from before the sensor first ran "
        "are not sent; an alert the webhook refuses is tried again on the next tick.",
        alert_on_tick_failures,
    )
