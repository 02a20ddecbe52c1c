"""Runs stuck in the queue: which ones are alerted, and what the alert says.

A run queued for longer than SYNC_ASSETS_ALERT_QUEUED_MINUTES is alerted once (a daemon that is
down, a concurrency limit never freed, a run coordinator misconfigured all look the same from
here: runs that wait). Pure functions: the sensor that reads the queue and posts the alerts is
sync_assets/defs/alerts/queue.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sync_assets.alerts import run_url


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    job: str
    queued_at: datetime  # when the run was created, timezone-aware


def overdue(
    queued: list[QueuedRun], alerted: set[str], now: datetime, minutes: float
) -> list[QueuedRun]:
    """The runs queued `minutes` or longer that have not been alerted yet, oldest first."""
    return sorted(
        (run for run in queued if run.run_id not in alerted and _minutes(run, now) >= minutes),
        key=lambda run: run.queued_at,
    )


def still_queued(alerted: set[str], queued: list[QueuedRun]) -> set[str]:
    """The alerted runs that are still queued: a run that left the queue never comes back to it,
    so it is forgotten, and what is remembered is bounded by the queue."""
    return alerted & {run.run_id for run in queued}


def _minutes(run: QueuedRun, now: datetime) -> float:
    return (now - run.queued_at).total_seconds() / 60


def queued_run_alert(
    run: QueuedRun, now: datetime, limit_minutes: float, ui_url: str | None
) -> dict[str, object]:
    """The JSON body of the alert for `run`, queued longer than `limit_minutes`."""
    link = run_url(ui_url, run.run_id)
    waited = int(_minutes(run, now))
    headline = (
        f"sync_assets: {run.job} run {run.run_id[:8]} has been queued for {waited} minutes "
        f"(alert after {limit_minutes:g}): is the daemon running?"
    )
    return {
        "text": "\n".join([headline, *([link] if link else [])]),
        "job": run.job,
        "run_id": run.run_id,
        "status": "QUEUED",
        "queued_at": run.queued_at.isoformat(timespec="seconds"),
        "queued_minutes": waited,
        "run_url": link,
    }
