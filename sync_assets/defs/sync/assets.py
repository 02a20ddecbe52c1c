"""The two-step sync as software-defined assets (SPEC §4, §7).

course_runs ─▶ enrolments ─▶ linked_memberships ─▶ latest_enrolments ─▶ activity_progress
     └──────────────────────────────────────────────────────┘ (run start times, R6)

Step one (linking) is upstream of step two (progress) in the lineage itself. Every partitioned
asset runs all its requested course partitions in one step (single-run backfill), so the nightly
run makes each Partners API request once and fetches each new membership once, whatever the
number of courses; a rerun of one course partition from the UI touches only that course.

Each asset is a declaration over a step of sync/steps/; `CourseStep` (course_step.py) is all
that stands between a step's `{course uuid: Outcome}` and Dagster's partitions.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at runtime.
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from sync_assets.defs import pools
from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.retries import retry_if_transient, transient_errors_retried
from sync_assets.defs.storage import StoredOutcomes
from sync_assets.defs.sync.changes import (
    CHECK_JOB,
    COURSES_NOT_RUN,
    check_the_courses,
    checked_progress,
    checked_tonight,
    found_all_changed,
    night_metadata,
)
from sync_assets.defs.sync.columns import asset_column_schema
from sync_assets.defs.sync.course_step import CourseStep, api_metadata, partition_table
from sync_assets.defs.sync.metadata import frame_metadata
from sync_assets.defs.sync.partitions import (
    course_partitions,
    first_run_of_night,
    is_partitioned_run,
    run_partition_keys,
)
from sync_assets.error_text import error_line
from sync_assets.markdown import markdown_text
from sync_assets.partners_api.client import run
from sync_assets.platform.database import database_kind
from sync_assets.runs.turns import pass_turn, wait_for_slot, wait_for_turn
from sync_assets.settings import courses_per_run, platform_database_url
from sync_assets.sync import fact_names, steps
from sync_assets.wording import counted

GROUP = "futurelearn_sync"
UNKNOWN_COURSES_CHECK = "unknown_courses_reported"
ONE_LATEST_CHECK = "one_latest_enrolment_per_user_and_course"
SHRINK_CHECK = "enrolment_report_not_shrunk"
OWNERS = ["team:learning-platform"]
# The nightly sync starts at 02:00 London. Fresh from 06:00 London when a course was applied (or
# skipped as unchanged) since midnight: a run applying no course records no materialisation
# (`output_unless_none_applied`), so a missed night and a night on which every course failed are
# late until a course is applied. A cron deadline in London's time keeps to 06:00 across clock
# changes, where a fixed window would drift by an hour.
NIGHTLY_FRESHNESS = dg.FreshnessPolicy.cron(
    deadline_cron="0 6 * * *", lower_bound_delta=timedelta(hours=6), timezone="Europe/London"
)
# The assets that read or write the platform database: their kinds name it too, once the
# definitions are built (`configured`) and the database is known.
USES_DATABASE = frozenset({"course_runs", "linked_memberships", "activity_progress"})


def shown_in_ui(asset: str) -> dict[str, Any]:
    """Every sync asset's kinds, owners and column descriptions (before any materialisation)."""
    return {
        "kinds": {"polars", "parquet"},
        "owners": OWNERS,
        "metadata": asset_column_schema(asset),
    }


@dg.asset(
    pool=pools.PARTNERS_API,
    group_name=GROUP,
    description="Every FutureLearn course run (one request), marked known or not (R1).",
    **shown_in_ui("course_runs"),
    check_specs=[
        dg.AssetCheckSpec(
            UNKNOWN_COURSES_CHECK,
            asset="course_runs",
            description="Warns when FutureLearn lists courses that no platform activity knows "
            "(R1): their runs are not synced. The result lists each with the title of its first "
            "run; silence one with FL_PARTNERS_IGNORED_COURSE_UUIDS.",
        )
    ],
)
def course_runs(
    context: dg.AssetExecutionContext,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):
    partitions = list(context.instance.get_dynamic_partitions(course_partitions.name))
    # The nightly check is a run of this asset alone: it checks every course partition.
    nightly = not is_partitioned_run(context.run.tags)
    keys = partitions if nightly else run_partition_keys(context.run.tags, partitions)
    with transient_errors_retried(context):  # it reads the activities and the courses' states
        night = run(check_the_courses(partners_api, platform_database.engine, keys))
    fetched, scope, check = night.fetched, night.scope, night.check
    runs = check.on_runs(fetched.runs)
    unknown = fetched.unknown_courses(partners_api.ignored_course_uuids())
    context.log.info(
        f"{counted(runs.height, 'run')} of {counted(runs['course_uuid'].n_unique(), 'course')}; "
        f"{len(fetched.known_course_uuids())} known, {unknown.height} unknown and not ignored; "
        f"{counted(len(scope.uuid_of), 'course')} checked: {len(check.changed)} to sync, "
        f"{len(check.unchanged)} unchanged"
    )
    # The night's partition table and preview: once a night, not in every chunk run (each
    # copy is a row per course in the event log).
    first = first_run_of_night(context.run.tags, partitions)
    catalogue = (
        {"course_partitions": dg.MetadataValue.md(partition_table(partitions, runs, fetched.known))}
        if first
        else {}
    )
    verdict = night_metadata(scope, check) if nightly else {}
    yield dg.Output(
        runs,
        metadata={
            **frame_metadata(runs, with_preview=first),
            "courses": runs["course_uuid"].n_unique(),
            "known_courses": len(fetched.known_course_uuids()),
            "unknown_courses": unknown.height,
            fact_names.UNKNOWN_COURSE_LIST: dg.MetadataValue.json(
                [{"uuid": uuid, "title": title} for uuid, title in unknown.iter_rows()]
            ),
            "not_modified": fetched.not_modified,
            fact_names.WITHDRAWN_COURSE_LIST: dg.MetadataValue.json(
                [{"uuid": uuid, "title": title} for uuid, title in fetched.withdrawn().items()]
            ),
            fact_names.QUARANTINED: dg.MetadataValue.json(
                steps.quarantine_reasons(fetched.quarantine)
            ),
            **verdict,
            **api_metadata(night.metrics, night.seconds),
            **catalogue,
        },
    )
    if context.job_name == CHECK_JOB and verdict and verdict[COURSES_NOT_RUN].value:
        # Progress is as current as the check: what freshness reads (a materialisation) says so
        # once, for the courses no run is made for. Only from the night's check job: a backfill
        # (the UI's "Materialize all") fails on an unpartitioned materialisation of an asset it
        # targets by partition.
        yield checked_progress(verdict[COURSES_NOT_RUN].value)
    yield dg.AssetCheckResult(
        check_name=UNKNOWN_COURSES_CHECK,
        passed=unknown.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description="Courses with runs on FutureLearn that no activity knows (R1); "
        "silence one with FL_PARTNERS_IGNORED_COURSE_UUIDS.",
        metadata={
            "unknown_courses": dg.MetadataValue.md(
                "\n".join(
                    f"- `{uuid}` {markdown_text(title)}" for uuid, title in unknown.iter_rows()
                )
                or "none"
            ),
            "count": unknown.height,
        },
    )


class EnrolmentsConfig(dg.Config):
    max_quarantine_share: float = Field(
        default=0.1,
        description="Refuse a course when more than this share of its report's records is "
        "quarantined (bad types, bad uuids, unreadable times) rather than apply the rest",
    )
    allow_quarantine_courses: list[str] = Field(
        default_factory=list,
        description="Courses (uuids or partition keys) to apply from their valid records however "
        "many are quarantined",
    )
    skip_unchanged: bool = Field(
        default=True,
        description="Skip a course whose reports are the ones it was last synced from and whose "
        "platform side (activity, achievements, users and links linking reads) has not changed "
        "since: nothing of it is parsed, planned or written. False recomputes every course.",
    )


@dg.asset(
    pool=pools.PARTNERS_API,
    group_name=GROUP,
    partitions_def=course_partitions,
    description="Enrolment reports of every run of the course, as one frame. Records that "
    "break the contract are quarantined with their reason; a course with too many is refused.",
    **shown_in_ui("enrolments"),
)
def enrolments(
    context: dg.AssetExecutionContext,
    config: EnrolmentsConfig,
    course_runs: pl.DataFrame,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):
    # The run's first step: a run started while others take the slots waits here for its own.
    waited = wait_for_slot(context.instance, context.run.tags)
    if waited is not None:
        context.log.info(
            f"started once run {waited.run_id} had ended and left its slot (waited "
            f"{waited.seconds:.1f} s): the runs of one sync execute a few at a time"
        )
    with transient_errors_retried(context):
        step = CourseStep(
            context,
            course_runs,
            known=steps.known_courses(platform_database.engine),
            stale_inputs=("course_runs",),
        )
        # A run the night's check made for courses it found changed skips none of them.
        skip_if_reports = (
            steps.courses_to_skip(platform_database.engine, course_runs, step.courses)
            if config.skip_unchanged
            and not found_all_changed(context.instance, context.run.tags, context.partition_keys)
            else {}
        )
    policy = steps.QuarantinePolicy(
        config.max_quarantine_share, step.course_uuids(config.allow_quarantine_courses)
    )

    async def fetch():
        async with partners_api.client() as client:
            # Each course recorded (spooled to disk) as soon as it is read, and dropped.
            return await steps.stream_enrolments(
                client, course_runs, step.courses, step.record_course, skip_if_reports, policy
            ), client.metrics

    started = time.perf_counter()
    fetched, metrics = run(fetch())
    seconds = time.perf_counter() - started
    context.log.info(fetched.summary())
    step.record_passed_on()
    yield step.output(
        {**api_metadata(metrics, seconds), fact_names.SKIPPED_UNCHANGED: step.unchanged_count}
    )
    step.finish()


# Steps the overlapping runs of one `sync-assets sync` execute one run at a time (runs/turns.py):
# linking, whose look-ups of a membership new to two runs would ask the API twice (R2).
LINKING_STEP = "linked_memberships"
STEPS_IN_TURN = frozenset({LINKING_STEP})


@dg.asset(
    pool=pools.PARTNERS_API,
    group_name=GROUP,
    partitions_def=course_partitions,
    description="Step one: memberships of the course's enrolments and the users they belong to "
    "(R2–R4). Each unknown membership is fetched once, ever.",
    **shown_in_ui("linked_memberships"),
)
def linked_memberships(
    context: dg.AssetExecutionContext,
    enrolments: StoredOutcomes,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):
    # Before anything is read: what the run before this one links and stores is read after it.
    waited = wait_for_turn(context.instance, context.run.tags, LINKING_STEP)
    if waited is not None:
        context.log.info(
            f"linked after run {waited.run_id}'s look-ups were stored (waited "
            f"{waited.seconds:.1f} s): one run at a time looks up memberships"
        )
    # Linking is the same whatever names the courses have: the step sees partition keys.
    step = CourseStep(context, None, {"enrolments": enrolments}, stale_inputs=("enrolments",))
    reports = step.inputs["enrolments"].frames(step.courses)

    def lookups_stored() -> None:
        pass_turn(context.instance, context.run.run_id, LINKING_STEP)
        context.log.debug("look-ups stored: a next run may link while this one matches")

    async def link():
        async with partners_api.client() as client:
            linked = await steps.link_memberships(
                client,
                platform_database.engine,
                reports,
                datetime.now(UTC),
                checked_tonight=checked_tonight(context.run.tags),
                lookups_stored=lookups_stored,
            )
            return linked, client.metrics

    started = time.perf_counter()
    try:
        (outcomes, stats), metrics = run(link())
    except Exception as error:
        retry_if_transient(context, error)  # what it stored is kept: a retry asks nothing again
        step.fail_every_course(f"linking: {error_line(error)}")
    seconds = time.perf_counter() - started  # look-ups dominate; matching is in here too
    context.log.info(stats.summary())
    step.record(outcomes.items(), one_by_one=False)
    yield step.output(
        {
            "memberships": stats.memberships,
            "already_linked": stats.already_linked,
            fact_names.LOOKED_UP: stats.looked_up,
            "gone_404": stats.gone,
            "linked_by_id": stats.linked_by_id,
            "linked_by_email": stats.linked_by_email,
            "relinked_locally": stats.relinked_locally,
            fact_names.KEPT_FETCHED_UNLINKED: stats.kept_unlinked,
            fact_names.AMBIGUOUS_EMAILS_TOTAL: stats.ambiguous.height,
            fact_names.LINK_CONFLICTS_TOTAL: stats.conflicts.height,
            fact_names.QUARANTINED: steps.quarantine_reasons(stats.quarantine),
            **api_metadata(metrics, seconds),
        }
    )
    step.finish()


@dg.asset(
    group_name=GROUP,
    partitions_def=course_partitions,
    description="Step two: each linked user's latest enrolment on the course, across runs and "
    "memberships (R5–R6).",
    **shown_in_ui("latest_enrolments"),
    check_specs=[
        dg.AssetCheckSpec(
            ONE_LATEST_CHECK,
            asset="latest_enrolments",
            description="Exactly one latest enrolment per user and course (R6): fails if any "
            "user has two rows in a course, which would make their progress depend on order.",
        )
    ],
)
def latest_enrolments(
    context: dg.AssetExecutionContext,
    enrolments: StoredOutcomes,
    linked_memberships: StoredOutcomes,
    course_runs: pl.DataFrame,
    platform_database: PlatformDatabase,
):
    with transient_errors_retried(context):
        known = steps.known_courses(platform_database.engine)  # which courses are withdrawn
    step = CourseStep(
        context,
        course_runs,
        {"enrolments": enrolments, "linked_memberships": linked_memberships},
        known=known,
        stale_inputs=("course_runs", "enrolments"),
    )
    step.record(
        steps.latest_outcomes(
            step.courses,
            step.inputs["enrolments"],
            step.inputs["linked_memberships"],
            course_runs,
        ),
        one_by_one=True,
    )
    yield step.output()
    duplicates = sum(facts.get(fact_names.DUPLICATE_ROWS, 0) for facts in step.facts.values())
    yield dg.AssetCheckResult(
        check_name=ONE_LATEST_CHECK,
        passed=duplicates == 0,
        metadata={"courses": step.course_count, "duplicate_rows": duplicates},
    )
    step.finish()


class ProgressConfig(dg.Config):
    dry_run: bool = Field(default=False, description="S3: compute and report, write nothing")
    max_shrink_share: float = Field(
        default=0.2, description="Refuse a course whose report shrank by more than this share"
    )
    allow_shrink_courses: list[str] = Field(
        default_factory=list,
        description="Courses (uuids or partition keys) whose shrunk report is known to be real: "
        "apply them anyway",
    )
    changed_rows_only: bool = Field(
        default=True,
        description="Plan only the learners whose report rows changed since the course's last "
        "write, when its platform side is as that write left it. False replans every learner "
        "of each course (a recomputation).",
    )


@dg.asset(
    pool=pools.PLATFORM_DB,
    group_name=GROUP,
    partitions_def=course_partitions,
    description="Step two: achievements' progress and state written from the latest enrolments "
    "(R7–R12), with links, transitions and completion events, one transaction per course. "
    "To rerun a course with fresh data, launch the job futurelearn_sync for its partition: "
    "materialising this asset alone re-applies the reports stored by an earlier run, and says so.",
    **shown_in_ui("activity_progress"),
    freshness_policy=NIGHTLY_FRESHNESS,
    # A run that applies nothing (every course failed, or a dry run) records no materialisation.
    output_required=False,
    check_specs=[
        dg.AssetCheckSpec(
            SHRINK_CHECK,
            asset="activity_progress",
            blocking=True,
            description="Blocking: progress is not applied for a course whose enrolment report "
            "shrank by more than max_shrink_share (20%) since its last successful sync; the run "
            "fails naming it and the other courses are applied. Allow a real shrink with "
            "allow_shrink_courses (or `sync-assets sync --allow-shrink COURSE`).",
        )
    ],
)
def activity_progress(
    context: dg.AssetExecutionContext,
    config: ProgressConfig,
    latest_enrolments: StoredOutcomes,
    linked_memberships: StoredOutcomes,
    enrolments: StoredOutcomes,
    course_runs: pl.DataFrame,
    platform_database: PlatformDatabase,
):
    with transient_errors_retried(context):
        known = steps.known_courses(platform_database.engine)
    step = CourseStep(
        context,
        course_runs,
        {
            "enrolments": enrolments,
            "latest_enrolments": latest_enrolments,
            "linked_memberships": linked_memberships,
        },
        known=known,
        stale_inputs=("course_runs", "enrolments"),
    )
    breaker = steps.CircuitBreaker(
        config.max_shrink_share, step.course_uuids(config.allow_shrink_courses)
    )
    options = steps.WriteOptions(
        datetime.now(UTC),
        breaker,
        config.dry_run,
        dagster_run_id=context.run.run_id,
        changed_rows_only=config.changed_rows_only,
    )
    inputs = (
        step.inputs["enrolments"],
        step.inputs["latest_enrolments"],
        step.inputs["linked_memberships"],
    )
    # A course's own write failing fails that course; what fails the whole step (reading the
    # courses' last states) is retried if transient: committed courses then find nothing to do.
    with transient_errors_retried(context):
        step.record(
            steps.progress_outcomes(
                platform_database.engine, step.courses, course_runs, inputs, options, context.log
            ),
            one_by_one=True,
        )
    refused = step.facts_named(fact_names.REFUSED)
    failed = len(step.upstream_failed) + len(step.failed) - len(refused)
    tally = steps.progress_tally(step.facts.values(), step.unchanged_count)
    context.log.info(steps.progress_summary(tally, failed, config.dry_run))
    # No output (so no materialisation) when every course failed, nor for a dry run: freshness
    # then sees the night late, and the stored outputs stay those of the last real write.
    yield from step.output_unless_none_applied(
        {
            fact_names.DRY_RUN: config.dry_run,
            "failed": failed,
            fact_names.SKIPPED_UNCHANGED: step.unchanged_count,
        },
        wrote=not config.dry_run,
    )
    yield dg.AssetCheckResult(
        check_name=SHRINK_CHECK,
        passed=not refused,
        description="Progress is not applied from a report that shrank by more than "
        f"{config.max_shrink_share:.0%} since the course's last successful sync; allow a course "
        "with the allow_shrink_courses config (or `sync-assets sync --allow-shrink UUID`).",
        metadata={"refused": dg.MetadataValue.json(refused)},
    )
    step.finish()


sync_assets_list = [
    course_runs,
    enrolments,
    linked_memberships,
    latest_enrolments,
    activity_progress,
]


def partitioned_sync_assets(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    """The course-partitioned assets among `assets`: what a course partition's data is."""
    return [asset.key for asset in assets if asset.partitions_def == course_partitions]


def configured(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The sync's assets as the environment sets them, read when the definitions are built:
    backfills chunked by SYNC_ASSETS_COURSES_PER_RUN, and the platform database's kind.

    Backfills of many courses run as few runs as memory allows (one step serves every course of
    its run): the partitioned assets' backfill policy is set here only, not in their decorators
    (where the parameter is beta in Dagster 1.13 and warns).
    """
    per_run = courses_per_run()
    policy = (
        dg.BackfillPolicy.single_run()
        if per_run is None
        else dg.BackfillPolicy.multi_run(max_partitions_per_run=per_run)
    )
    database = database_kind(platform_database_url())
    chunked = [
        asset.with_attributes(backfill_policy=policy) if asset.partitions_def else asset
        for asset in assets
    ]
    return list(
        dg.map_asset_specs(
            lambda spec: (
                spec.merge_attributes(kinds={database})
                if spec.key.to_user_string() in USES_DATABASE
                else spec
            ),
            chunked,
        )
    )
