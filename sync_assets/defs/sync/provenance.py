"""Which stored upstream values a step used, when the run did not make them itself.

Materialising `activity_progress` (or `latest_enrolments`, `linked_memberships`) alone for a
course reuses the stored enrolments: no request is made, so the "rerun" applies what FutureLearn
said at that earlier time. That is sometimes what an operator wants (re-apply after a platform
fix) but must never pass for a fresh sync. So such a step says, in its log, in each course's
metadata and as a run tag, which run fetched what it used and when; a run that fetched the
reports itself says it is fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

# The steps that ask FutureLearn; what comes after them is computed from what they stored.
FETCHING_ASSETS = ("course_runs", "enrolments")
# On a night's sync run: the check run that fetched tonight's course_runs (and each report's
# digest) for it. Such a run reuses that course_runs by design: it is this night's, not stale.
CHECK_RUN_TAG = "sync_assets/check_run"
FRESH_RERUN = (
    "launch the job futurelearn_sync for the course's partition (or materialise this asset "
    "with its upstream assets) to fetch fresh data"
)


@dataclass(frozen=True)
class StoredInput:
    asset: str
    run_id: str | None
    at: datetime | None

    def describe(self) -> str:
        if self.run_id is None and self.at is None:
            return f"{self.asset}: never materialised"
        when = self.at.strftime("%Y-%m-%d %H:%M:%S UTC") if self.at else "an unknown time"
        return f"{self.describe_run()} at {when}"

    def describe_run(self) -> str:
        """What made it, without when: the same for every course one run fetched."""
        if self.run_id is None and self.at is None:
            return f"{self.asset}: never materialised"
        by = f"run {self.run_id[:8]}" if self.run_id else "an event without a run"
        return f"{self.asset} as fetched by {by}"


def inputs_not_fetched_in_run(
    context: dg.AssetExecutionContext, inputs: tuple[str, ...]
) -> list[str]:
    """The fetching assets among `inputs` that this run does not materialise (course_runs
    aside on a night's sync run: its check run fetched it tonight)."""
    selected = context.run.asset_selection
    if not selected:  # the whole job (None, or empty from execute_in_process): every step runs
        return []
    names = {key.to_user_string() for key in selected}
    if CHECK_RUN_TAG in context.run.tags:
        names.add("course_runs")
    return [name for name in inputs if name in FETCHING_ASSETS and name not in names]


def stored_input(instance: dg.DagsterInstance, asset: str, partition: str | None) -> StoredInput:
    """The latest materialisation of an input (of one partition, if partitioned)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    if not records:
        return StoredInput(asset, None, None)
    record = records[0]
    return StoredInput(asset, record.run_id or None, datetime.fromtimestamp(record.timestamp, UTC))


def report_stale_inputs(
    context: dg.AssetExecutionContext, inputs: tuple[str, ...], partitions: list[str]
) -> dict[str, dict[str, Any]]:
    """Say, for each course, which stored inputs this step used instead of fetching them.

    Logs it, tags the run, and returns it as each course's metadata; nothing when the run
    fetched everything itself.
    """
    stale = inputs_not_fetched_in_run(context, inputs)
    notes: dict[str, dict[str, Any]] = {}
    if not stale:
        return notes
    # course_runs is not partitioned: one look-up serves every course.
    looked_up: dict[tuple[str, str | None], StoredInput] = {}
    # The runs whose values were used → the courses that used them, and each course's own
    # description (with when each value was stored).
    courses_using: dict[str, list[str]] = {}
    for partition in partitions:
        used = []
        for asset in stale:
            key = (asset, partition if asset != "course_runs" else None)
            if key not in looked_up:
                looked_up[key] = stored_input(context.instance, *key)
            used.append(looked_up[key])
        described = "; ".join(item.describe() for item in used)
        courses_using.setdefault("; ".join(i.describe_run() for i in used), []).append(partition)
        notes[partition] = {
            "fresh_from_futurelearn": False,
            "inputs_from_earlier_runs": described,
        }
    # One warning for the courses that used values of the same runs (a rerun of a later asset
    # over a range: usually all of them), not one each: every log line is an event stored.
    for runs, courses in courses_using.items():
        context.log.warning(stale_inputs_warning(courses, runs, notes))
    context.instance.add_run_tags(
        context.run.run_id,
        {"sync_assets/inputs": f"stored {', '.join(stale)} reused, not fetched in this run"},
    )
    return notes


def stale_inputs_warning(courses: list[str], runs: str, notes: dict[str, dict[str, Any]]) -> str:
    """The warning of the courses (partition keys) that used stored values of the same `runs`:
    one course's says when they were stored; several courses' leave that to each one's
    metadata (`notes`)."""
    if len(courses) == 1:
        described = notes[courses[0]]["inputs_from_earlier_runs"]
        return (
            f"course {courses[0]}: nothing was requested from FutureLearn for it in this run; "
            f"it uses {described}. To sync it with fresh data, {FRESH_RERUN}."
        )
    return (
        f"{len(courses)} courses ({', '.join(courses)}): nothing was requested from FutureLearn "
        f"for them in this run; they use {runs} (when: each course's inputs_from_earlier_runs). "
        f"To sync one with fresh data, {FRESH_RERUN}."
    )
