"""Running the sync job from the command line, through the Dagster instance at DAGSTER_HOME.

Runs are executed in this process but recorded in the instance, so they show in the UI with
their metadata, exactly like the scheduled ones. The summary is read back from the run's own
materialisation metadata: what the CLI prints is what the UI shows.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from filelock import FileLock

from sync_assets.definitions import defs
from sync_assets.defs.certificates.jobs import daily_certificates_job
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.run_status import IN_FLIGHT
from sync_assets.defs.sync.jobs import all_partitions_tags, futurelearn_sync_job
from sync_assets.defs.sync.partitions import course_partitions
from sync_assets.defs.sync.sensors import missing_course_partitions
from sync_assets.settings import ConfigurationError, data_dir, project_dir

API_ASSETS = ("course_runs", "enrolments", "linked_memberships")
LAUNCHED_BY_TAG, HOST_TAG, PID_TAG = (
    "sync_assets/launched_by",
    "sync_assets/host",
    "sync_assets/pid",
)
INSTANCE_LOCK_TIMEOUT_SECONDS = 300
# The command prints its own progress and one line per failure from the event log; Dagster's
# console logger would add each failure again with its stack trace. The UI keeps everything.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def cli_run_tags() -> dict[str, str]:
    """Who runs a run launched from the command line, so a later command can tell it died."""
    return {
        LAUNCHED_BY_TAG: "cli",
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_dead_cli_runs(instance: dg.DagsterInstance, say: Callable[[str], None] = print) -> int:
    """Mark failed the runs a killed `sync-assets` process on this host left running.

    An in-process run whose process was killed (`kill -9`, OOM, power cut) stays STARTED for ever
    and keeps its concurrency pool slots, so every later run would wait for them. The daemon's
    run monitoring does this for runs it launched; this does it for the command line's own.
    """
    host = socket.gethostname()
    records = instance.get_runs(
        dg.RunsFilter(statuses=IN_FLIGHT, tags={LAUNCHED_BY_TAG: "cli", HOST_TAG: host})
    )
    reaped = 0
    for run in records:
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid <= 0 or pid == os.getpid() or _process_alive(pid):
            continue
        instance.report_run_failed(
            run, f"the sync-assets process (pid {pid}) running it ended without finishing it"
        )
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        say(
            f"Run {run.run_id} ({run.job_name}) was left running by a killed process: marked failed"
        )
        reaped += 1
    return reaped


@contextmanager
def open_instance(say: Callable[[str], None] = print) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance at DAGSTER_HOME, ready for a command-line run.

    Two commands starting together on a new home would both create its SQLite storage and one
    would crash; a lock file in the home makes them take turns for the set-up only.
    """
    home = ensure_dagster_home()
    with FileLock(home / ".sync_assets.lock", timeout=INSTANCE_LOCK_TIMEOUT_SECONDS):
        try:
            instance = dg.DagsterInstance.get()
        except Exception as error:  # a dagster.yaml it cannot use, storage it cannot open
            problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ConfigurationError(
                "DAGSTER_HOME",
                f"the Dagster instance at {home} cannot be opened: {type(error).__name__}: "
                f"{problem} (check {home / 'dagster.yaml'})",
            ) from None
        reap_dead_cli_runs(instance, say)
    with instance:
        yield instance


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to data/dagster_home with the project's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or data_dir() / "dagster_home").resolve()
    config = home / "dagster.yaml"
    template = project_dir() / "dagster.yaml"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not config.exists() and template.exists():
            shutil.copy(template, config)
        probe = home / ".sync_assets.lock"
        probe.touch()
    except OSError as error:
        why = "it is a file, not a folder" if home.is_file() else error.strerror
        raise ConfigurationError(
            "DAGSTER_HOME", f"{home} cannot be used as the Dagster instance: {why}"
        ) from None
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class CourseLine:
    course_uuid: str
    status: str
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


def _resource_values() -> dict[str, Any]:
    return dict(defs.resources or {})


def prepare_partitions(instance: dg.DagsterInstance, courses: list[str] | None) -> list[str]:
    """Add a partition for every known course with runs; return the partitions to sync."""
    existing = list(instance.get_dynamic_partitions(course_partitions.name))
    resources = _resource_values()
    with dg.build_resources(
        {
            "partners_api": resources["partners_api"],
            "platform_database": resources["platform_database"],
        }
    ) as built:
        missing = missing_course_partitions(
            built.partners_api, built.platform_database, set(existing)
        )
    if missing:
        instance.add_dynamic_partitions(course_partitions.name, missing)
    partitions = list(instance.get_dynamic_partitions(course_partitions.name))
    if not courses:
        return partitions
    unknown = [course for course in courses if course not in partitions]
    if unknown:
        raise ConfigurationError(
            "--course",
            f"not a known course with runs on FutureLearn (R1): {', '.join(unknown)}",
        )
    return [course for course in partitions if course in set(courses)]


def _run_config(
    dry_run: bool, allow_shrink: list[str], allow_quarantine: list[str] = ()
) -> dict[str, Any]:
    progress = {"dry_run": dry_run, "allow_shrink_courses": list(allow_shrink)}
    reports = {"allow_quarantine_courses": list(allow_quarantine)}
    return {
        "ops": {"activity_progress": {"config": progress}, "enrolments": {"config": reports}},
        **QUIET_LOGGERS,
    }


def _follow(
    instance: dg.DagsterInstance, run_id: str, done: threading.Event, say: Callable[[str], None]
) -> None:
    """Print each step as it starts and ends, from the run's event log.

    Reads only step events past a cursor: this thread shares the GIL with the run, and re-reading
    the whole log twice a second once cost the run's request fan-out a fifth of its pace.
    """
    started = time.monotonic()
    cursor: str | None = None
    wanted = {
        dg.DagsterEventType.STEP_START: "started",
        dg.DagsterEventType.STEP_SUCCESS: "done",
        dg.DagsterEventType.STEP_FAILURE: "FAILED",
    }
    while True:
        finished = done.is_set()
        page = instance.get_records_for_run(run_id, cursor=cursor, of_type=set(wanted))
        cursor = page.cursor
        for record in page.records:
            event = record.event_log_entry.dagster_event
            if event is not None and event.event_type in wanted:
                elapsed = time.monotonic() - started
                say(f"  [{elapsed:6.1f}s] {event.step_key}: {wanted[event.event_type]}")
        if finished:
            return
        done.wait(0.5)


def _execute(
    instance: dg.DagsterInstance,
    run_config: dict[str, Any],
    say: Callable[[str], None],
    **target: Any,
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(futurelearn_sync_job.name)
    return _execute_job(job, instance, run_config, say, **target)


def _execute_job(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    run_config: dict[str, Any],
    say: Callable[[str], None],
    **target: Any,
) -> dg.ExecuteInProcessResult:
    run_id = str(uuid.uuid4())
    target["tags"] = {**target.get("tags", {}), **cli_run_tags()}
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(instance, run_id, done, say), daemon=True)
    follower.start()
    try:
        return job.execute_in_process(
            run_config=run_config, instance=instance, run_id=run_id, raise_on_error=False, **target
        )
    finally:
        done.set()
        follower.join(timeout=5)


def launch_sync(
    instance: dg.DagsterInstance,
    partitions: list[str],
    *,
    all_courses: bool,
    dry_run: bool = False,
    allow_shrink: list[str] | None = None,
    allow_quarantine: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> SyncReport:
    """One run over every partition, or one run per chosen course; then the summary."""
    started = time.monotonic()
    run_config = _run_config(dry_run, allow_shrink or [], allow_quarantine or [])
    if all_courses:
        say(f"Syncing {len(partitions)} courses in one run")
        results = [_execute(instance, run_config, say, tags=all_partitions_tags(partitions))]
    else:
        results = []
        for course in partitions:
            say(f"Syncing course {course}")
            results.append(_execute(instance, run_config, say, partition_key=course))
    report = SyncReport(
        run_ids=[result.run_id for result in results],
        success=all(result.success for result in results),
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )
    for result in results:
        _read_result(result, report)
    report.courses.sort(key=lambda line: line.course_uuid)
    return report


def _value(metadata: dict[str, Any], name: str, default: Any = 0) -> Any:
    entry = metadata.get(name)
    return default if entry is None else entry.value


def _read_result(result: dg.ExecuteInProcessResult, report: SyncReport) -> None:
    api_by_asset: dict[str, tuple[int, int]] = {}
    quarantined: dict[str, int] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        metadata = dict(materialization.metadata)
        if name in API_ASSETS:
            # A step's request counts sit on each of its partitions: count them once per step.
            api_by_asset[name] = (
                _value(metadata, "api_requests"),
                _value(metadata, "api_not_modified_304"),
            )
        if name == "course_runs":
            report.unknown_courses = list(_value(metadata, "unknown_course_list", []))
        if name == "enrolments" and materialization.partition:
            quarantined[materialization.partition] = _value(metadata, "quarantined_records")
        if name == "linked_memberships" and materialization.partition:
            report.memberships_kept = _value(metadata, "kept_fetched_unlinked")
            report.ambiguous_total = _value(metadata, "ambiguous_emails_total")
            report.link_conflicts_total = _value(metadata, "link_conflicts_total")
            course = materialization.partition
            if _value(metadata, "ambiguous_emails"):
                report.ambiguous_emails[course] = _value(metadata, "ambiguous_email_users", [])
            if _value(metadata, "link_conflicts"):
                report.link_conflicts[course] = _value(metadata, "link_conflict_users", [])
        if name == "activity_progress" and materialization.partition:
            report.courses.append(
                CourseLine(
                    course_uuid=materialization.partition,
                    status=_value(metadata, "status", "?"),
                    links_made=_value(metadata, "links_made"),
                    created=_value(metadata, "achievements_created"),
                    updated=_value(metadata, "achievements_updated"),
                    completed=_value(metadata, "achievements_completed"),
                    dropped=_value(metadata, "achievements_dropped"),
                    note=_value(metadata, "refused", "") or _value(metadata, "error", ""),
                )
            )
    for line in report.courses:
        line.quarantined = quarantined.get(line.course_uuid, line.quarantined)
    report.requests += sum(requests for requests, _ in api_by_asset.values())
    report.not_modified += sum(not_modified for _, not_modified in api_by_asset.values())
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE") and event.message:
            failure = event.step_failure_data.error if event.is_step_failure else None
            text = _failure_text(failure) if failure is not None else event.message
            report.failures.append(f"{event.step_key or 'run'}: {text}")


def format_report(report: SyncReport) -> str:
    """The summary table the CLI prints."""
    header = (
        "course",
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
        (line.course_uuid, line.status, *(str(getattr(line, name)) for name in counts))
        for line in report.courses
    ]
    totals = [sum(getattr(line, name) for line in report.courses) for name in counts]
    rows.append(("total", f"{len(report.courses)} courses", *map(str, totals)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), line(tuple("-" * width for width in widths)), *map(line, rows)]
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
    notes = [line for line in report.courses if line.note]
    if notes:
        out.append(f"Courses not applied, and why ({len(notes)}):")
        out += [f"  {line.course_uuid}: {line.note}" for line in notes]
    if report.certificates:
        out.append(format_certificates(report.certificates))
    out.append(f"Time: {report.seconds:.1f} s; Dagster run(s): {', '.join(report.run_ids)}")
    return "\n".join(out)


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


def format_certificates(figures: dict[str, Any]) -> str:
    numbers = figures.get("numbers_by_programme") or {}
    issued = ", ".join(
        f"{programme} {min(given)}–{max(given)}" for programme, given in sorted(numbers.items())
    )
    return (
        f"Certificates: {figures.get('events_handled', 0)} completion events handled, "
        f"{figures.get('enrolments_moved_to_pending', 0)} enrolments moved to pending, "
        f"{figures.get('notifications_written', 0)} notifications written, "
        f"{figures.get('certificates_issued', 0)} certificates issued"
        + (f" ({issued})." if issued else ".")
    )


def run_certificate_work(
    instance: dg.DagsterInstance, report: SyncReport, say: Callable[[str], None] = print
) -> None:
    """What the daemon does: every completion event still pending (C1, C3), then C2.

    Every pending event, not only this command's own: events left pending by a crash, a failed
    run or a database outage are finished by the next command that gets here.
    """
    say("Certificate work: pending completion events, then certificates due (C2)")
    job = defs.resolve_job_def(daily_certificates_job.name)
    result = _execute_job(job, instance, QUIET_LOGGERS, say)
    report.run_ids.append(result.run_id)
    report.success = report.success and result.success
    figures: dict[str, Any] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            figures |= {
                name: value.value for name, value in event.event_specific_data.metadata.items()
            }
        elif event.is_step_failure and event.step_failure_data.error is not None:
            report.failures.append(f"certificates: {_failure_text(event.step_failure_data.error)}")
    report.certificates = figures


def launch_resync(
    instance: dg.DagsterInstance,
    course_uuid: str,
    user_ids: list[str],
    say: Callable[[str], None] = print,
) -> tuple[SyncReport, dict[str, str]]:
    """Run the resync job in process; returns the report and each user's outcome."""
    started = time.monotonic()
    job = defs.resolve_job_def(resync_learners_job.name)
    config = {"course_uuid": course_uuid, "user_ids": user_ids}
    result = _execute_job(
        job, instance, {"ops": {"resync_learners_op": {"config": config}}, **QUIET_LOGGERS}, say
    )
    report = SyncReport(
        run_ids=[result.run_id],
        success=result.success,
        dry_run=False,
        seconds=time.monotonic() - started,
    )
    outcomes: dict[str, str] = {}
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            report.failures.append(_failure_text(event.step_failure_data.error))
    if result.success:
        outcomes = result.output_for_node("resync_learners_op")
    return report, outcomes


def _failure_text(error: Any) -> str:
    """An error's own message in one line, without the module path Dagster puts before it.

    Dagster wraps some errors ("Error occurred while handling output …:"); the cause, the
    wrapped error's message, is what the operator needs, so it is kept after the wrapper's line.
    """
    lines = [line.strip() for line in error.message.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    cause = getattr(error, "cause", None)
    if text.endswith(":") and cause is not None:
        text += " " + _failure_text(cause)
    elif text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    return re.sub(r"(^|: )[\w.]+\.(\w+): ", r"\1", text)
