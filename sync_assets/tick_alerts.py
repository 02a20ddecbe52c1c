"""Failed schedule and sensor ticks: which ones are alerted, and what the alert says.

An instigator that fails keeps failing, tick after tick (a sensor every 30 s, 120 ticks an
hour): an alert per tick would bury the one that matters. So the first failed tick of a streak
is alerted; the ticks that fail after it are not, until a tick succeeds or skips, which ends the
streak. The next failure after that is news again. Pure functions: the sensor that reads the
ticks and posts the alerts is sync_assets/defs/alerts/ticks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sync_assets.alerts import ERROR_CHARS, shorten

FAILURE, STARTED = "FAILURE", "STARTED"  # Dagster's TickStatus values (also SUCCESS, SKIPPED)


@dataclass(frozen=True)
class Tick:
    """One tick of a schedule or sensor, as the instance's tick storage holds it."""

    tick_id: int
    timestamp: float  # when the tick started
    status: str  # STARTED, SUCCESS, SKIPPED or FAILURE
    error: str = ""  # why a failed tick failed


@dataclass(frozen=True)
class Watched:
    """How far the ticks of one instigator have been read: the last finished tick and whether
    it ended a streak of failures still open (then the next failure is not news)."""

    tick_id: int = 0
    timestamp: float = 0.0
    failing: bool = False

    def as_json(self) -> list[object]:
        return [self.tick_id, self.timestamp, self.failing]

    @classmethod
    def from_json(cls, value: list[object]) -> Watched:
        tick_id, timestamp, failing = value
        return cls(int(tick_id), float(timestamp), bool(failing))  # type: ignore[arg-type]


def baseline(newest_first: list[Tick]) -> Watched:
    """Where watching an instigator starts: after its newest finished tick. Its history is not
    news (as run failures from before the run failure sensor first ran are not)."""
    for tick in newest_first:
        if tick.status != STARTED:
            return Watched(tick.tick_id, tick.timestamp, tick.status == FAILURE)
    return Watched()


@dataclass(frozen=True)
class Step:
    """One tick read: whether to alert it, and how far the ticks are read once it is handled."""

    tick: Tick
    alert: bool
    watched: Watched


def read_ticks(watched: Watched, ticks: list[Tick]) -> list[Step]:
    """The ticks after `watched`, oldest first, each with whether it is alerted.

    A tick still running (STARTED) stops the reading if it is the newest: it may yet fail, and is
    read again next time. One followed by newer ticks was abandoned (a daemon that died mid-tick)
    and is passed over.
    """
    new = sorted((tick for tick in ticks if tick.tick_id > watched.tick_id), key=_tick_id)
    steps: list[Step] = []
    for index, tick in enumerate(new):
        if tick.status == STARTED:
            if index == len(new) - 1:
                break
            continue
        failed = tick.status == FAILURE
        alert = failed and not watched.failing
        watched = replace(watched, tick_id=tick.tick_id, timestamp=tick.timestamp, failing=failed)
        steps.append(Step(tick, alert, watched))
    return steps


def _tick_id(tick: Tick) -> int:
    return tick.tick_id


def instigator_url(ui_url: str | None, location: str, repository: str, kind: str, name: str):
    """The instigator's page in the Dagster UI (its tick history), or None without the UI's URL."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/locations/{repository}@{location}/{kind}s/{name}"


def tick_failure_alert(kind: str, name: str, tick: Tick, url: str | None) -> dict[str, object]:
    """The JSON body of the alert for the failed `tick` of the schedule or sensor `name`."""
    failed_at = datetime.fromtimestamp(tick.timestamp, UTC).isoformat(timespec="seconds")
    headline = (
        f"sync_assets: {kind} {name} failed (further failures are not alerted until it works)"
    )
    details = [shorten(tick.error, 300)] if tick.error else []
    return {
        "text": "\n".join([headline, *details, *([url] if url else [])]),
        "kind": kind,
        "name": name,
        "status": FAILURE,
        "tick_id": tick.tick_id,
        "failed_at": failed_at,
        "error": shorten(tick.error, ERROR_CHARS),
        "url": url,
    }
