"""The summary of a command's runs, read back from their event logs.

What the command prints is what the UI shows: every figure comes from the runs' own
materialisation and output metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from sync_assets.defs.sync.changes import COURSES_NOT_RUN
from sync_assets.sync import fact_names
from sync_assets.wording import counted


@dataclass
class CourseLine:
    partition_key: str
    status: str
    title: str = ""
    course_uuid: str = ""
    links_made: int = 0
    created: int = 0
    updated: int = 0
    completed: int = 0
    dropped: int = 0
    quarantined: int = 0
    note: str = ""


@dataclass
class SyncReport:
    run_ids: list[str]
    success: bool
    dry_run: bool
    seconds: float
    courses: list[CourseLine] = field(default_factory=list)
    unknown_courses: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    not_modified: int = 0
    failures: list[str] = field(default_factory=list)
    certificates: dict[str, Any] = field(default_factory=dict)
    memberships_kept: int = 0  # looked up and stored, links or not
    ambiguous_total: int = 0  # memberships, each once however many courses it is in
    link_conflicts_total: int = 0
    # course → pseudonymised users: ambiguous emails (not linked) and stored links R3 disputes
    ambiguous_emails: dict[str, list[list[str]]] = field(default_factory=dict)
    link_conflicts: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def _value(metadata: dict[str, Any], name: str, default: Any = 0) -> Any:
    entry = metadata.get(name)
    return default if entry is None else entry.value


def read_sync_run(events: list[dg.DagsterEvent], report: SyncReport) -> None:
    """Add one sync run's figures to the report."""
    api_by_asset: dict[str, tuple[int, int]] = {}
    quarantined: dict[str, int] = {}
    # Per step, repeated on each of its partitions: taken once per run, then added up over runs.
    linking: dict[str, int] = {}
    for event in events:
        if event.is_asset_observation:
            # A run that applied no course records its courses' outcomes as observations.
            observation = event.asset_observation_data.asset_observation
            if observation.asset_key == dg.AssetKey("activity_progress") and observation.partition:
                report.courses.append(
                    _course_line(observation.partition, dict(observation.metadata))
                )
            continue
        if not event.is_step_materialization:
            continue
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        metadata = dict(materialization.metadata)
        if fact_names.API_REQUESTS in metadata:  # a step that asks the Partners API
            # A step's request counts sit on each of its partitions: count them once per step.
            api_by_asset[name] = (
                _value(metadata, fact_names.API_REQUESTS),
                _value(metadata, fact_names.API_NOT_MODIFIED),
            )
        if name == "course_runs":
            report.unknown_courses = list(_value(metadata, fact_names.UNKNOWN_COURSE_LIST, []))
        if name == "enrolments" and materialization.partition:
            quarantined[materialization.partition] = _value(
                metadata, fact_names.QUARANTINED_RECORDS
            )
        if name == "linked_memberships" and materialization.partition:
            linking = {
                "memberships_kept": _value(metadata, fact_names.KEPT_FETCHED_UNLINKED),
                "ambiguous_total": _value(metadata, fact_names.AMBIGUOUS_EMAILS_TOTAL),
                "link_conflicts_total": _value(metadata, fact_names.LINK_CONFLICTS_TOTAL),
            }
            course = materialization.partition
            if _value(metadata, fact_names.AMBIGUOUS_EMAILS):
                report.ambiguous_emails[course] = _value(
                    metadata, fact_names.AMBIGUOUS_EMAIL_USERS, []
                )
            if _value(metadata, fact_names.LINK_CONFLICTS):
                report.link_conflicts[course] = _value(metadata, fact_names.LINK_CONFLICT_USERS, [])
        if name == "activity_progress" and materialization.partition:
            report.courses.append(_course_line(materialization.partition, metadata))
    for line in report.courses:
        line.quarantined = quarantined.get(line.partition_key, line.quarantined)
    report.requests += sum(requests for requests, _ in api_by_asset.values())
    report.not_modified += sum(not_modified for _, not_modified in api_by_asset.values())
    for name, count in linking.items():
        setattr(report, name, getattr(report, name) + count)
    report.failures += run_failures(events)


def read_check_run(events: list[dg.DagsterEvent], report: SyncReport) -> None:
    """Add the night's check run to the report: its requests, the unknown courses, and a line
    for each course it found nothing to do for (unchanged, withdrawn, no longer known)."""
    for event in events:
        if not event.is_step_materialization:
            continue
        materialization = event.event_specific_data.materialization
        if materialization.asset_key != dg.AssetKey("course_runs"):
            continue
        metadata = dict(materialization.metadata)
        report.requests += _value(metadata, fact_names.API_REQUESTS)
        report.not_modified += _value(metadata, fact_names.API_NOT_MODIFIED)
        report.unknown_courses = list(_value(metadata, fact_names.UNKNOWN_COURSE_LIST, []))
        for course in _value(metadata, COURSES_NOT_RUN, []):
            report.courses.append(
                CourseLine(
                    partition_key=course["partition_key"],
                    status=course[fact_names.STATUS],
                    title=course.get(fact_names.COURSE_TITLE, ""),
                    course_uuid=course.get(fact_names.COURSE_UUID, ""),
                )
            )
    report.failures += run_failures(events)


def _course_line(partition_key: str, metadata: dict[str, Any]) -> CourseLine:
    """A course's line of the summary, from its activity_progress partition's metadata."""
    return CourseLine(
        partition_key=partition_key,
        status=_value(metadata, fact_names.STATUS, "?"),
        title=_value(metadata, fact_names.COURSE_TITLE, ""),
        course_uuid=_value(metadata, fact_names.COURSE_UUID, ""),
        links_made=_value(metadata, fact_names.LINKS_MADE),
        created=_value(metadata, fact_names.ACHIEVEMENTS_CREATED),
        updated=_value(metadata, fact_names.ACHIEVEMENTS_UPDATED),
        completed=_value(metadata, fact_names.ACHIEVEMENTS_COMPLETED),
        dropped=_value(metadata, fact_names.ACHIEVEMENTS_DROPPED),
        note=_value(metadata, fact_names.REFUSED, "") or _value(metadata, fact_names.ERROR, ""),
    )


def run_failures(events: list[dg.DagsterEvent], *, steps_only: bool = False) -> list[str]:
    """One line per failed step (its error's own message), and the run's failure message."""
    failures = []
    wanted = ("STEP_FAILURE",) if steps_only else ("STEP_FAILURE", "RUN_FAILURE")
    for event in events:
        if event.event_type_value in wanted and event.message:
            failure = event.step_failure_data.error if event.is_step_failure else None
            text = failure_text(failure) if failure is not None else event.message
            failures.append(f"{event.step_key or 'run'}: {text}")
    return failures


def output_metadata(events: list[dg.DagsterEvent]) -> dict[str, Any]:
    """The values of every step output's metadata in a run, later steps last."""
    figures: dict[str, Any] = {}
    for event in events:
        if event.event_type_value == "STEP_OUTPUT":
            figures |= {
                name: value.value for name, value in event.event_specific_data.metadata.items()
            }
    return figures


def format_report(report: SyncReport) -> str:
    """The summary table the CLI prints."""
    header = (
        "course",
        "title",
        "status",
        "links",
        "created",
        "updated",
        "completed",
        "dropped",
        "quarantined",
    )
    counts = ("links_made", "created", "updated", "completed", "dropped", "quarantined")
    rows = [
        (
            line.partition_key,
            _short(line.title),
            line.status,
            *(str(getattr(line, n)) for n in counts),
        )
        for line in report.courses
    ]
    totals = [sum(getattr(line, name) for line in report.courses) for name in counts]
    rows.append(("total", "", counted(len(report.courses), "course"), *map(str, totals)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), line(tuple("-" * width for width in widths)), *map(line, rows)]
    skipped = sum(1 for course in report.courses if course.status == fact_names.STATUS_UNCHANGED)
    if skipped:
        out.append(
            f"{skipped} skipped as unchanged: reports and platform side as at their last "
            "successful sync, so nothing was parsed, planned or written for them."
        )
    if report.dry_run:
        out.append(
            "Dry run: no link, progress or certificate was written. The "
            f"{report.memberships_kept} memberships looked up were kept (fetched, not linked), "
            "so no membership is asked about twice (R2)."
        )
    out.append(
        f"Partners API: {report.requests} requests, {report.not_modified} answered 304 (unchanged)."
    )
    if report.unknown_courses:
        out.append(f"Unknown courses (R1), not synced ({len(report.unknown_courses)}):")
        out += [f"  {course['uuid']}  {course['title']}" for course in report.unknown_courses]
    out += _linking_problems(report)
    withdrawn = [line for line in report.courses if line.status == fact_names.STATUS_WITHDRAWN]
    if withdrawn:
        courses = counted(len(withdrawn), "known course")
        out.append(
            f"Withdrawn (R1): FutureLearn lists no runs for {courses}; nothing synced, "
            "achievements left as they are:"
        )
        out += [f"  {line.partition_key} ({line.course_uuid})" for line in withdrawn]
    gone = [line for line in report.courses if line.status == fact_names.STATUS_NO_LONGER_KNOWN]
    if gone:
        out.append(
            f"No longer known (R1): no activity has the uuid of {counted(len(gone), 'course')} "
            "any more; not synced, its partition is retired at the next check:"
        )
        out += [f"  {line.partition_key}" for line in gone]
    notes = [line for line in report.courses if line.note]
    if notes:
        out.append(f"Courses not applied, and why ({len(notes)}):")
        out += [f"  {line.partition_key} ({line.course_uuid}): {line.note}" for line in notes]
    if report.certificates:
        out.append(format_certificates(report.certificates))
    out.append(f"Time: {report.seconds:.1f} s; Dagster run(s): {', '.join(report.run_ids)}")
    return "\n".join(out)


def _short(title: str, width: int = 40) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def _linking_problems(report: SyncReport) -> list[str]:
    """For the platform team: emails several users share, stored links R3 disagrees with."""
    out = []
    if report.ambiguous_total:
        out.append(
            f"Ambiguous emails, not linked (one external id, several users with that email; "
            f"users as pseudonyms): {report.ambiguous_total}"
        )
        out += [
            f"  {course}: " + "; ".join(" = ".join(users) for users in groups)
            for course, groups in sorted(report.ambiguous_emails.items())
        ]
    if report.link_conflicts_total:
        out.append(
            "Stored links kept although their external id names another user: "
            f"{report.link_conflicts_total}"
        )
        out += [
            f"  {course}: "
            + "; ".join(
                f"{pair['linked']} (external id names {pair['external_id_names']})"
                for pair in pairs
            )
            for course, pairs in sorted(report.link_conflicts.items())
        ]
    return out


def no_certificate_work() -> dict[str, Any]:
    """The figures of a certificate run that had nothing to do, for a command that made none."""
    counts = (
        fact_names.EVENTS_HANDLED,
        fact_names.ENROLMENTS_MOVED_TO_PENDING,
        fact_names.NOTIFICATIONS_WRITTEN,
        fact_names.CERTIFICATES_ISSUED,
    )
    return {name: 0 for name in counts} | {fact_names.NUMBERS_BY_PROGRAMME: {}}


def format_certificates(figures: dict[str, Any]) -> str:
    numbers = figures.get(fact_names.NUMBERS_BY_PROGRAMME) or {}
    issued = ", ".join(
        f"{programme} {min(given)}–{max(given)}" for programme, given in sorted(numbers.items())
    )

    def figure(name: str, noun: str) -> str:
        return counted(figures.get(name, 0), noun)

    return (
        f"Certificates: {figure(fact_names.EVENTS_HANDLED, 'completion event')} handled, "
        f"{figure(fact_names.ENROLMENTS_MOVED_TO_PENDING, 'enrolment')} moved to pending, "
        f"{figure(fact_names.NOTIFICATIONS_WRITTEN, 'notification')} written, "
        f"{figure(fact_names.CERTIFICATES_ISSUED, 'certificate')} issued"
        + (f" ({issued})." if issued else ".")
    )


def failure_text(error: Any) -> str:
    """An error's own message in one line, without the module path Dagster puts before it.

    Dagster wraps some errors ("Error occurred while handling output …:"); the cause, the
    wrapped error's message, is what the operator needs, so it is kept after the wrapper's line.
    """
    lines = [line.strip() for line in error.message.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    cause = getattr(error, "cause", None)
    if text.endswith(":") and cause is not None:
        text += " " + failure_text(cause)
    elif text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    return re.sub(r"(^|: )[\w.]+\.(\w+): ", r"\1", text)
