"""What `sync-assets sync`, `resync` and `certificates` run, and the summary they print.

Every run is created from the code location with its origin (see `execution.py`), then executed
in this process or, with `--submit`, queued for the daemon. The summary is read back from the
runs' own event logs: what the command prints is what the UI shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from sync_assets.definitions import defs
from sync_assets.defs.certificates.jobs import daily_certificates_job
from sync_assets.defs.resync.jobs import resync_learners_job
from sync_assets.defs.sync.jobs import all_partitions_tags, futurelearn_sync_job
from sync_assets.defs.sync.partitions import (
    course_chunks,
    course_partitions,
)
from sync_assets.defs.sync.sensors import (
    NOTHING_TO_CHANGE,
    apply_partition_update,
    plan_partition_update,
)
from sync_assets.runs.courses import course_uuid_argument
from sync_assets.runs.execution import CodeLocationRuns, FinishedRun
from sync_assets.runs.report import (
    SyncReport,
    output_metadata,
    read_sync_run,
    run_failures,
)
from sync_assets.settings import ConfigurationError, courses_per_run
from sync_assets.sync import fact_names

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
    with dg.build_resources(
        {name: resources[name] for name in ("partners_api", "platform_database", "io_manager")}
    ) as built:
        update = plan_partition_update(existing, built.partners_api, built.platform_database)
        apply_partition_update(instance, update, built.io_manager)
    if update.describe() != NOTHING_TO_CHANGE:
        say(f"Course partitions: {update.describe()}")
    partitions = list(instance.get_dynamic_partitions(course_partitions.name))
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


def sync_run_tags(partitions: list[str], *, all_courses: bool) -> list[dict[str, str]]:
    """One run per chunk of SYNC_ASSETS_COURSES_PER_RUN courses, or per chosen course."""
    if not all_courses:
        return [{"dagster/partition": course} for course in partitions]
    return [all_partitions_tags(chunk) for chunk in course_chunks(partitions, courses_per_run())]


def _run_all(
    runs: CodeLocationRuns,
    job_name: str,
    run_config: dict[str, Any],
    tags: list[dict[str, str]],
    *,
    submit: bool,
    say: Callable[[str], None],
) -> list[FinishedRun]:
    if not submit:
        return [runs.execute(job_name, run_config, run_tags, say) for run_tags in tags]
    run_ids = [runs.submit(job_name, run_config, run_tags) for run_tags in tags]
    say(f"Queued {len(run_ids)} run(s) for the daemon: {', '.join(run_ids)}")
    return runs.wait(run_ids, say)


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
    """The sync job over the partitions, in runs of bounded size; then the summary."""
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
    tags = sync_run_tags(partitions, all_courses=all_courses)
    if all_courses:
        say(f"Syncing {len(partitions)} courses in {len(tags)} run(s)")
    finished = _run_all(runs, futurelearn_sync_job.name, run_config, tags, submit=submit, say=say)
    report = SyncReport(
        run_ids=[run.run_id for run in finished],
        success=all(run.success for run in finished),
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )
    for run in finished:
        read_sync_run(run.events, report)
    report.courses.sort(key=lambda line: line.partition_key)
    return report


def run_certificate_work(
    runs: CodeLocationRuns,
    report: SyncReport,
    *,
    submit: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """What the daemon does: every completion event still pending (C1, C3), then C2.

    Every pending event, not only this command's own: events left pending by a crash, a failed
    run or a database outage are finished by the next command that gets here.
    """
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
