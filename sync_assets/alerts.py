"""Run failure alerts: what one failed run's alert says, and its delivery to a webhook.

The payload is plain JSON a person can read in a chat message (`text`) and a tool can route
(the other fields). It names the job, the run, the steps and courses that failed and why, and
links to the run in the UI. The webhook URL is a secret (chat webhooks carry their token in the
path): no message here ever contains it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from sync_assets.error_text import redact
from sync_assets.wording import counted

ERROR_CHARS = 1000  # an alert is a pointer to the run, not its log
COURSES_LISTED = 50
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class FailedRun:
    """What the event log says about a failed run."""

    run_id: str
    job: str
    failed_steps: list[str] = field(default_factory=list)
    failed_courses: dict[str, str] = field(default_factory=dict)  # partition key → why
    error: str = ""
    failed_at: str | None = None  # ISO 8601 UTC


def run_url(ui_url: str | None, run_id: str) -> str | None:
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit`, and redacted: an alert leaves the deployment, so it carries no
    email whatever error it quotes (reasons stored by older releases included)."""
    text = redact(text.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_alert(run: FailedRun, ui_url: str | None) -> dict[str, object]:
    """The JSON body of the alert for `run`."""
    link = run_url(ui_url, run.run_id)
    courses = sorted(run.failed_courses.items())
    headline = f"sync_assets: {run.job} run {run.run_id[:8]} failed"
    if courses:
        headline += f": {counted(len(courses), 'course')} not synced"
    elif run.failed_steps:
        headline += f" in {', '.join(run.failed_steps)}"
    details = [shorten(run.error, 300)] if run.error else []
    return {
        "text": "\n".join([headline, *details, *([link] if link else [])]),
        "job": run.job,
        "run_id": run.run_id,
        "status": "FAILURE",
        "failed_at": run.failed_at,
        "failed_steps": run.failed_steps,
        "failed_course_count": len(courses),
        "failed_courses": [
            {"partition": key, "reason": shorten(why, 300)} for key, why in courses[:COURSES_LISTED]
        ],
        "error": shorten(run.error, ERROR_CHARS),
        "run_url": link,
    }


class _HideWebhookUrls(logging.Filter):
    """httpx logs each request URL at INFO: a webhook URL is replaced before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.secret_urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret_urls and isinstance(record.args, tuple):
            record.args = tuple(
                "[alert webhook]" if str(arg) in self.secret_urls else arg for arg in record.args
            )
        return True


_HIDE_WEBHOOK_URLS = _HideWebhookUrls()
logging.getLogger("httpx").addFilter(_HIDE_WEBHOOK_URLS)


class AlertNotDelivered(Exception):
    """The webhook did not take the alert; the message never includes the webhook's URL."""


def post_alert(
    webhook_url: str, payload: Mapping[str, object], timeout: float = TIMEOUT_SECONDS
) -> None:
    _HIDE_WEBHOOK_URLS.secret_urls.add(str(httpx.URL(webhook_url)))
    try:
        response = httpx.post(webhook_url, json=dict(payload), timeout=timeout)
    except httpx.HTTPError as error:
        # str(error) may quote the URL: the type says enough (refused, timed out …).
        reason = type(error).__name__
        raise AlertNotDelivered(f"the webhook could not be reached ({reason})") from None
    if not response.is_success:
        raise AlertNotDelivered(f"the webhook answered HTTP {response.status_code}")
