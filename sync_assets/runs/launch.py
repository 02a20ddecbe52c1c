"""What `sync-assets sync`, `resync` and `certificates` run, and the summary they print.

Every run is created from the code location with its origin (see `execution.py`), then executed
in this process or, with `--submit`, queued for the daemon. The summary is read back from the
runs' own event logs: what the command prints is what the UI shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from sqlalchemy.exc import DBAPIError

from sync_assets.definitions import defs
from sync_assets.defs.certificates.jobs import daily_certificates_job
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.sync.changes import changed_courses
from sync_assets.defs.sync.jobs import futurelearn_check_job, futurelearn_sync_job
from sync_assets.defs.sync.night import (
    FOLLOWED_BY_COMMAND,
    FOLLOWED_BY_TAG,
    HANDOFF_STEP,
    PER_COURSE_ASSETS,
    changed_course_run_tags,
    runs_overlap,
)
from sync_assets.defs.sync.partitions import course_partitions
from sync_assets.defs.sync.sensors import (
    NOTHING_TO_CHANGE,
    apply_partition_update,
    plan_partition_update,
)
from sync_assets.platform import certificate_store
from sync_assets.platform.database import create_platform_engine
from sync_assets.runs.courses import course_uuid_argument
from sync_assets.runs.execution import CodeLocationRuns, FinishedRun
from sync_assets.runs.report import (
    SyncReport,
    no_certificate_work,
    output_metadata,
    read_check_run,
    read_sync_run,
    run_failures,
)
from sync_assets.settings import ConfigurationError
from sync_assets.sync import fact_names
from sync_assets.wording import counted

__all__ = ["course_uuid_argument"]  # re-exported: where the commands have always found it


def prepare_partitions(
    instance: dg.DagsterInstance,
    courses: list[str] | None,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Bring the course partitions up to date (added, migrated, retired, as the sensor does, and
    said); return the keys of those to sync.

    `courses` may name a course by its uuid or by its partition key.
    """
    existing = list(instance.get_dynamic_partitions(course_partitions.name))
    resources = dict(defs.resources or {})
    # On this instance: without one, build_resources creates an ephemeral instance (in-memory
    # storages, each stamped by alembic) for every call.
    with dg.build_resources(
        {name: resources[name] for name in ("partners_api", "platform_database", "io_manager")},
        instance=instance,
    ) as built:
        update = plan_partition_update(existing, built.partners_api, built.platform_database)
        apply_partition_update(instance, update, built.io_manager)
    changes = update.changes
    if update.describe() != NOTHING_TO_CHANGE:
        say(f"Course partitions: {update.describe()}")
    partitions = (
        list(instance.get_dynamic_partitions(course_partitions.name))
        if changes.add or changes.replace or changes.retire
        else existing  # nothing added, renamed or retired: as read above
    )
    if not courses:
        return partitions
    keys = update.course_keys(partitions)
    chosen = {course: course if course in partitions else keys.key(course) for course in courses}
    unknown = [course for course, key in chosen.items() if key is None]
    if unknown:
        raise ConfigurationError(
            "--course",
            "neither a course partition key nor the uuid of a known course with a partition "
            f"(R1: one FutureLearn has listed runs of): {', '.join(unknown)}",
        )
    wanted = set(chosen.values())
    return [key for key in partitions if key in wanted]


def chosen_course_run_tags(partitions: list[str]) -> list[dict[str, str]]:
    """One run per chosen course (`--course`): each checks and syncs its course."""
    return [{"dagster/partition": course} for course in partitions]


def _run_all(
    runs: CodeLocationRuns,
    job_name: str,
    run_config: dict[str, Any],
    tags: list[dict[str, str]],
    *,
    submit: bool,
    say: Callable[[str], None],
    asset_selection: Sequence[dg.AssetKey] | None = None,
    handoff_step: str | None = None,
) -> list[FinishedRun]:
    """Execute the runs here (overlapping, given the step after which the next may start) or
    queue them for the daemon, and follow them to their end."""
    if not submit and handoff_step is not None and len(tags) > 1:
        return runs.execute_overlapping(
            job_name, run_config, tags, say, asset_selection, handoff_step=handoff_step
        )
    if not submit:
        return [
            runs.execute(job_name, run_config, run_tags, say, asset_selection) for run_tags in tags
        ]
    run_ids = [runs.submit(job_name, run_config, run_tags, asset_selection) for run_tags in tags]
    say(f"Queued {len(run_ids)} run(s) for the daemon: {', '.join(run_ids)}")
    return runs.wait(run_ids, say)


@dataclass(frozen=True)
class NightRuns:
    """The sync runs a night's check asks for: each run's tags, and whether they overlap."""

    tags: list[dict[str, str]]
    overlapping: bool


def _night_runs(
    runs: CodeLocationRuns,
    partitions: list[str],
    *,
    submit: bool,
    recompute_unchanged: bool,
    report: SyncReport,
    say: Callable[[str], None],
) -> NightRuns | None:
    """The night's check run, then the runs for the courses it found changed (every course with
    `recompute_unchanged`); None if the check failed (the report says why)."""
    (check,) = _run_all(
        runs,
        futurelearn_check_job.name,
        {},
        [{FOLLOWED_BY_TAG: FOLLOWED_BY_COMMAND}],
        submit=submit,
        say=say,
    )
    report.run_ids.append(check.run_id)
    read_check_run(check.events, report)
    if not check.success:
        report.success = False
        return None
    changed = partitions if recompute_unchanged else changed_courses(runs.instance, check.run_id)
    # Runs executed here overlap (one linking and writing while the next reads its reports); the
    # daemon's queue runs them one at a time per pool (dagster.yaml), so they are not cut for it.
    overlapping = not submit and runs_overlap(len(changed))
    tags = changed_course_run_tags(partitions, changed, check.run_id, overlapping=overlapping)
    say(
        f"Checked {counted(len(partitions), 'course')}: {len(changed)} to sync, "
        f"in {counted(len(tags), 'run')}"
    )
    return NightRuns(tags, overlapping)


def launch_sync(
    runs: CodeLocationRuns,
    partitions: list[str],
    *,
    all_courses: bool,
    dry_run: bool = False,
    allow_shrink: list[str] | None = None,
    allow_quarantine: list[str] | None = None,
    submit: bool = False,
    recompute_unchanged: bool = False,
    say: Callable[[str], None] = print,
) -> SyncReport:
    """Every course (the night's check, then runs of the changed courses only) or the chosen
    ones (a run each); then the summary."""
    started = time.monotonic()
    run_config = {
        "ops": {
            "activity_progress": {
                "config": {
                    "dry_run": dry_run,
                    "allow_shrink_courses": list(allow_shrink or []),
                    # A recomputation replans every learner, not only those whose rows changed.
                    "changed_rows_only": not recompute_unchanged,
                }
            },
            "enrolments": {
                "config": {
                    "allow_quarantine_courses": list(allow_quarantine or []),
                    "skip_unchanged": not recompute_unchanged,
                }
            },
        }
    }
    report = SyncReport(run_ids=[], success=True, dry_run=dry_run, seconds=0.0)
    selection: Sequence[dg.AssetKey] | None = None
    if all_courses:
        night = _night_runs(
            runs,
            partitions,
            submit=submit,
            recompute_unchanged=recompute_unchanged,
            report=report,
            say=say,
        )
        tags, overlapping = (night.tags, night.overlapping) if night else ([], False)
        selection = PER_COURSE_ASSETS  # course_runs is the check's
    else:
        # One run per chosen course, one after another: too small to pay a process each.
        tags, overlapping = chosen_course_run_tags(partitions), False
    finished = (
        _run_all(
            runs,
            futurelearn_sync_job.name,
            run_config,
            tags,
            submit=submit,
            say=say,
            asset_selection=selection,
            handoff_step=HANDOFF_STEP if overlapping else None,
        )
        if tags
        else []
    )
    report.run_ids += [run.run_id for run in finished]
    report.success = report.success and all(run.success for run in finished)
    report.seconds = time.monotonic() - started
    for run in finished:
        read_sync_run(run.events, report)
    # A course the check found unchanged and a run synced all the same (--recompute-unchanged):
    # the run's line, read last, is what happened to it.
    by_key = {line.partition_key: line for line in report.courses}
    report.courses = sorted(by_key.values(), key=lambda line: line.partition_key)
    return report


NO_CERTIFICATE_WORK = "Certificate work: no pending completion events, no certificates due: no run"


def _certificate_work_waiting() -> bool:
    """Whether the platform database holds certificate work now (read-only); True when it
    cannot tell."""
    engine = create_platform_engine()  # the database the job's steps use (PlatformDatabase)
    try:
        with engine.connect() as connection:
            return certificate_store.has_certificate_work(connection)
    except DBAPIError:
        # An outage: the run goes ahead as before, retries what is transient, and a failure
        # reaches the summary as a failed certificate run, not as an error of this read.
        return True
    finally:
        engine.dispose()


def run_certificate_work(
    runs: CodeLocationRuns,
    report: SyncReport,
    *,
    submit: bool = False,
    always: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """What the daemon does: every completion event still pending (C1, C3), then C2.

    Every pending event, not only this command's own: events left pending by a crash, a failed
    run or a database outage are finished by the next command that gets here. Unless `always`,
    no run is made when the platform database says there is nothing to do (issue 33: a quiet
    night costs a run and its events for nothing otherwise); the summary then shows the zero
    figures such a run would have.
    """
    # A race is harmless: an event written, or an enrolment falling due, after this read is
    # left pending, not lost; the daemon's completion events sensor and `daily_certificates`
    # schedule, or the next command that gets here, handle it.
    if not always and not _certificate_work_waiting():
        say(NO_CERTIFICATE_WORK)
        report.certificates = no_certificate_work()
        return
    say("Certificate work: pending completion events, then certificates due (C2)")
    (finished,) = _run_all(runs, daily_certificates_job.name, {}, [{}], submit=submit, say=say)
    report.run_ids.append(finished.run_id)
    report.success = report.success and finished.success
    report.failures += [
        f"certificates: {failure.split(': ', 1)[-1]}"
        for failure in run_failures(finished.events, steps_only=True)
    ]
    report.certificates = output_metadata(finished.events)


def launch_resync(
    runs: CodeLocationRuns,
    course_uuid: str,
    user_ids: list[str],
    *,
    submit: bool = False,
    say: Callable[[str], None] = print,
) -> tuple[SyncReport, dict[str, str]]:
    """The resync job for chosen learners; returns the report and each user's outcome."""
    started = time.monotonic()
    config = {"course_uuid": course_uuid, "user_ids": user_ids}
    (finished,) = _run_all(
        runs,
        resync_learners_job.name,
        {"ops": {"resync_learners_op": {"config": config}}},
        [{}],
        submit=submit,
        say=say,
    )
    report = SyncReport(
        run_ids=[finished.run_id],
        success=finished.success,
        dry_run=False,
        seconds=time.monotonic() - started,
    )
    report.failures += [
        failure.split(": ", 1)[-1] for failure in run_failures(finished.events, steps_only=True)
    ]
    outcomes: dict[str, str] = {}
    if finished.success:
        # The metadata names users by pseudonym, in the order given: map them back by position.
        listed = output_metadata(finished.events).get(fact_names.RESYNC_OUTCOMES, [])
        by_position = {entry["position"]: entry["outcome"] for entry in listed}
        unique = dict.fromkeys(user_ids)  # as the resync itself takes them
        outcomes = {user: by_position[i + 1] for i, user in enumerate(unique)}
    return report, outcomes
