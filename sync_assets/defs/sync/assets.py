"""The two-step sync as software-defined assets (SPEC §4, §7).

course_runs ─▶ enrolments ─▶ linked_memberships ─▶ latest_enrolments ─▶ activity_progress
     └──────────────────────────────────────────────────────┘ (run start times, R6)

Step one (linking) is upstream of step two (progress) in the lineage itself. Every partitioned
asset runs all its requested course partitions in one step (single-run backfill), so the nightly
run makes each Partners API request once and fetches each new membership once, whatever the
number of courses; a rerun of one course partition from the UI touches only that course.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at runtime.
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from sync_assets import failpoints
from sync_assets.defs import pools
from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.storage import (
    CourseFailed,
    CourseFailure,
    CourseUnchanged,
    PartitionFrames,
    PartitionSpool,
    StampedFrame,
)
from sync_assets.defs.sync.columns import asset_column_schema
from sync_assets.defs.sync.failures import (
    fail_run_if_last,
    failed_metadata,
    record_failed_partitions,
)
from sync_assets.defs.sync.metadata import (
    add_partition_metadata,
    frame_metadata,
    linking_problems_metadata,
    reasons,
    rss_after_course,
    run_peak_memory_metadata,
)
from sync_assets.defs.sync.partitions import CourseKeys, course_partitions
from sync_assets.defs.sync.provenance import report_stale_inputs
from sync_assets.error_text import error_line
from sync_assets.markdown import markdown_text
from sync_assets.partners_api.client import run
from sync_assets.platform import change_tracking, sync_store, transactions
from sync_assets.platform.database import database_kind
from sync_assets.settings import courses_per_run, platform_database_url
from sync_assets.sync import steps
from sync_assets.wording import counted

# Backfills of many courses run as few runs as memory allows: one step serves every course of
# its run. A backfill from the UI is chunked as the nightly schedule is, by
# SYNC_ASSETS_COURSES_PER_RUN.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
BACKFILL_POLICY = (
    dg.BackfillPolicy.single_run()
    if courses_per_run() is None
    else dg.BackfillPolicy.multi_run(max_partitions_per_run=courses_per_run())
)
GROUP = "futurelearn_sync"
UNKNOWN_COURSES_CHECK = "unknown_courses_reported"
ONE_LATEST_CHECK = "one_latest_enrolment_per_user_and_course"
SHRINK_CHECK = "enrolment_report_not_shrunk"
OWNERS = ["team:learning-platform"]
# The nightly sync runs at 02:00 London; a day and two hours without a materialisation means a
# night was missed (or failed for every course), not that a run was slow.
NIGHTLY_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))


def kinds(*, database: bool) -> set[str]:
    """Kind tags: frames in polars, stored as parquet, and the platform database if it is used."""
    return {"polars", "parquet", *([database_kind(platform_database_url())] if database else [])}


def shown_in_ui(asset: str, *, database: bool) -> dict[str, Any]:
    """Every sync asset's kinds, owners and column descriptions (before any materialisation)."""
    return {
        "kinds": kinds(database=database),
        "owners": OWNERS,
        "metadata": asset_column_schema(asset),
    }


_NO_CHANGES = pl.DataFrame(schema=sync_store.ACHIEVEMENT_CHANGE_SCHEMA)
# Stamped on a course's frames (`StampedFrame`): what it is computed from, for activity_progress
# to record with the course's write (change_tracking).
REPORT_FINGERPRINT = "report_fingerprint"
LINKING_GENERATION = "linking_generation"
UNCHANGED = "unchanged"  # a course's status when skipped as unchanged


def unchanged_metadata() -> dict[str, str]:
    return {
        "status": UNCHANGED,
        "note": "skipped as unchanged: its reports and the platform side are those of its last "
        "successful sync (nothing read, parsed or written for it)",
    }


def _api_metadata(metrics: Any) -> dict[str, Any]:
    figures = metrics.as_dict()
    return {
        "api_requests": figures["requests"],
        "api_not_modified_304": figures["not_modified_304"],
        "api_retries": figures["retries"],
        "api_bytes": figures["bytes_received"],
        "api_requests_by_status": dg.MetadataValue.json(figures["by_endpoint_and_status"]),
    }


def course_keys(partition_keys: list[str], course_runs: pl.DataFrame) -> CourseKeys:
    """The course each partition of the run stands for (see `partitions`)."""
    return CourseKeys.resolve(
        partition_keys,
        course_runs["course_uuid"].unique(),
        known=set(course_runs.filter("known")["course_uuid"]),
    )


def unresolved_keys(partition_keys: list[str], keys: CourseKeys) -> dict[str, str]:
    """Partitions whose course FutureLearn no longer lists: failed, with why."""
    return {
        key: "no course FutureLearn lists now has a uuid starting with this key's suffix "
        "(the course was withdrawn, or its digits are ambiguous)"
        for key in partition_keys
        if keys.uuid(key) is None
    }


def partition_table(partition_keys: list[str], course_runs: pl.DataFrame) -> str:
    """Markdown: each course partition's key, course uuid and title now, by title."""
    keys = course_keys(partition_keys, course_runs)
    titles = steps.course_titles(course_runs)
    rows = sorted(
        (titles.get(keys.uuid(key) or "", ""), key, keys.uuid(key) or "(no such course now)")
        for key in partition_keys
    )
    lines = ["| title | partition key | course uuid |", "| --- | --- | --- |"]
    # The title is the API's: escaped, so it cannot add a column, a link or an image.
    lines += [f"| {markdown_text(title)} | `{key}` | `{uuid}` |" for title, key, uuid in rows]
    return "\n".join(lines)


def course_metadata(course_uuid: str | None, titles: dict[str, str]) -> dict[str, str]:
    """Which course a partition is: the uuid ↔ key ↔ title mapping, on every materialisation."""
    if course_uuid is None:
        return {}
    return {"course_uuid": course_uuid, "course_title": titles.get(course_uuid, "")}


@dg.asset(
    pool=pools.PARTNERS_API,
    group_name=GROUP,
    description="Every FutureLearn course run (one request), marked known or not (R1).",
    **shown_in_ui("course_runs", database=True),  # which courses the platform knows
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
    async def fetch():
        async with partners_api.client() as client:
            return await steps.fetch_course_runs(client, platform_database.engine), client.metrics

    fetched, metrics = run(fetch())
    runs = fetched.runs
    unknown = fetched.unknown_courses(partners_api.ignored_course_uuids())
    context.log.info(
        f"{counted(runs.height, 'run')} of {counted(runs['course_uuid'].n_unique(), 'course')}; "
        f"{len(fetched.known_course_uuids())} known, {unknown.height} unknown and not ignored"
    )
    yield dg.Output(
        runs,
        metadata={
            **frame_metadata(runs),
            "courses": runs["course_uuid"].n_unique(),
            "known_courses": len(fetched.known_course_uuids()),
            "unknown_courses": unknown.height,
            "unknown_course_list": dg.MetadataValue.json(
                [{"uuid": uuid, "title": title} for uuid, title in unknown.iter_rows()]
            ),
            "not_modified": fetched.not_modified,
            "course_partitions": dg.MetadataValue.md(
                partition_table(
                    list(context.instance.get_dynamic_partitions(course_partitions.name)), runs
                )
            ),
            "quarantined": dg.MetadataValue.json(reasons(fetched.quarantine)),
            **_api_metadata(metrics),
        },
    )
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


def unchanged_platform_courses(
    engine: Any, course_runs: pl.DataFrame, courses: list[str]
) -> dict[str, str]:
    """Course → the report fingerprint it was last synced from, for each course whose platform
    side is what it was then (change_tracking); a course whose reports still have that
    fingerprint is skipped as unchanged."""
    generation = change_tracking.refresh_linking_state(engine)
    activity_of = dict(
        course_runs.filter("known").select("course_uuid", "activity_id").unique().iter_rows()
    )
    with engine.connect() as connection:
        states = sync_store.last_course_states(connection, courses)
        summaries = change_tracking.achievement_summaries(
            connection, {activity_of[c] for c in states if c in activity_of}
        )
    return {
        course: state.report_fingerprint
        for course, state in states.items()
        if course in activity_of
        and state.report_fingerprint
        and state.platform_fingerprint
        == change_tracking.platform_fingerprint(
            activity_of[course], summaries.get(activity_of[course]), generation
        )
    }


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
    backfill_policy=BACKFILL_POLICY,
    description="Enrolment reports of every run of the course, as one frame. Records that "
    "break the contract are quarantined with their reason; a course with too many is refused.",
    **shown_in_ui("enrolments", database=False),
)
def enrolments(
    context: dg.AssetExecutionContext,
    config: EnrolmentsConfig,
    course_runs: pl.DataFrame,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):  # yields {course partition: frame, CourseFailure or CourseUnchanged}
    report_stale_inputs(context, ("course_runs",), context.partition_keys)
    keys = course_keys(context.partition_keys, course_runs)
    titles = steps.course_titles(course_runs)
    unresolved = unresolved_keys(context.partition_keys, keys)
    courses = [keys.uuid_of_key[key] for key in context.partition_keys if key not in unresolved]
    skip_if_reports = (
        unchanged_platform_courses(platform_database.engine, course_runs, courses)
        if config.skip_unchanged
        else {}
    )

    async def fetch():
        async with partners_api.client() as client:
            fetched = await steps.fetch_enrolments(client, course_runs, courses, skip_if_reports)
            return fetched, client.metrics

    started = time.perf_counter()
    fetched, metrics = run(fetch())
    api_seconds = time.perf_counter() - started
    refused: dict[str, str] = {}
    key_of = keys.key_of_uuid
    for course in sorted(fetched.skipped):
        course_run_uuids = set(course_runs.filter(pl.col("course_uuid") == course)["run_uuid"])
        add_partition_metadata(
            context,
            {
                **course_metadata(course, titles),
                **unchanged_metadata(),
                "runs": len(course_run_uuids),
                "reports_unchanged_304": len(course_run_uuids & fetched.unchanged_runs),
            },
            key_of[course],
        )
    for course, frame in fetched.by_course.items():
        course_run_uuids = set(course_runs.filter(pl.col("course_uuid") == course)["run_uuid"])
        quarantined = fetched.quarantine.filter(pl.col("source").is_in(list(course_run_uuids)))
        refusal = steps.quarantine_refusal(
            quarantined,
            frame.height,
            config.max_quarantine_share,
            allowed=bool({course, key_of[course]} & set(config.allow_quarantine_courses)),
        )
        if refusal:
            refused[key_of[course]] = refusal
            context.log.error(f"course {key_of[course]}: {refusal}")
        add_partition_metadata(
            context,
            {
                **course_metadata(course, titles),
                **frame_metadata(frame),
                **({"status": "refused", "error": refusal} if refusal else {}),
                "runs": len(course_run_uuids),
                "reports_unchanged_304": len(course_run_uuids & fetched.unchanged_runs),
                "memberships": frame["membership_uuid"].n_unique(),
                "quarantined_records": quarantined.height,
                "quarantined": dg.MetadataValue.json(reasons(quarantined)),
            },
            key_of[course],
        )
    failed = {key_of[course]: why for course, why in fetched.failed.items()} | unresolved
    for key, why in failed.items():
        context.log.error(f"course {key}: {why}")
        add_partition_metadata(
            context, {**course_metadata(keys.uuid(key), titles), **failed_metadata(why)}, key
        )
    context.log.info(
        f"{counted(len(context.partition_keys), 'course')}: "
        f"{counted(len(fetched.changed_runs), 'report')} changed, "
        f"{len(fetched.unchanged_runs)} unchanged (304), "
        f"{counted(fetched.quarantine.height, 'record')} quarantined, "
        f"{counted(len(failed), 'course')} failed, "
        f"{len(fetched.skipped)} skipped as unchanged"
    )
    by_key: dict[str, StampedFrame | CourseUnchanged] = {
        key_of[course]: StampedFrame(
            frame, {REPORT_FINGERPRINT: fetched.report_fingerprints[course]}
        )
        for course, frame in fetched.by_course.items()
    }
    by_key |= {key_of[course]: CourseUnchanged() for course in fetched.skipped}
    yield dg.Output(
        {**by_key, **failures({**failed, **refused})},
        metadata={
            **_api_metadata(metrics),
            "api_seconds": round(api_seconds, 3),
            "skipped_unchanged": len(fetched.skipped),
            **run_peak_memory_metadata(),
        },
    )
    record_failed_partitions(context, {**failed, **refused}, {})
    fail_run_if_last(context, {**failed, **refused})


@dg.asset(
    pool=pools.PARTNERS_API,
    group_name=GROUP,
    partitions_def=course_partitions,
    backfill_policy=BACKFILL_POLICY,
    description="Step one: memberships of the course's enrolments and the users they belong to "
    "(R2–R4). Each unknown membership is fetched once, ever.",
    **shown_in_ui("linked_memberships", database=True),  # stores look-ups, matches users
)
def linked_memberships(
    context: dg.AssetExecutionContext,
    enrolments: PartitionFrames,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
):  # yields {course partition: frame or CourseFailure}
    report_stale_inputs(context, ("enrolments",), list(enrolments))
    upstream_failed = enrolments.failures()
    unchanged = enrolments.unchanged()

    async def link():
        async with partners_api.client() as client:
            result = await steps.link_memberships(
                client, platform_database.engine, enrolments.succeeded(), datetime.now(UTC)
            )
            return result, client.metrics

    started = time.perf_counter()
    try:
        (by_course, stats), metrics = run(link())
    except Exception as error:
        # Linking binds learners' emails: Dagster would keep the whole error (a database's later
        # lines quote the failing row) in the event log. One redacted line names each course.
        why = f"linking: {error_line(error)}"
        linking = sorted(enrolments.succeeded())
        raise dg.Failure(
            description=f"{counted(len(linking), 'course')} not linked: {why}",
            metadata={
                "failed_courses": dg.MetadataValue.json(
                    {**upstream_failed, **dict.fromkeys(linking, why)}
                )
            },
        ) from None
    api_seconds = time.perf_counter() - started  # look-ups dominate; matching is in here too
    for course, frame in by_course.items():
        course_memberships = frame.select("membership_uuid")
        ambiguous = stats.ambiguous.join(course_memberships, on="membership_uuid")
        conflicts = stats.conflicts.join(course_memberships, on="membership_uuid")
        add_partition_metadata(
            context,
            {
                **frame_metadata(frame),
                "linked": frame.filter(pl.col("user_id").is_not_null()).height,
                "links_made": frame.filter(pl.col("new_link")).height,
                "unlinked": frame.filter(pl.col("user_id").is_null()).height,
                **linking_problems_metadata(ambiguous, conflicts),
            },
            course,
        )
    failed = {**upstream_failed, **stats.failed_courses}
    for course, why in stats.failed_courses.items():
        context.log.error(f"course {course}: {why}")
        add_partition_metadata(context, failed_metadata(why), course)
    for course in sorted(unchanged):
        add_partition_metadata(context, unchanged_metadata(), course)
    context.log.info(
        f"{counted(stats.memberships, 'membership')}: {stats.already_linked} linked before, "
        f"{stats.looked_up} looked up ({stats.gone} gone), "
        f"{stats.linked_by_id} linked by id, {stats.linked_by_email} by email, "
        f"{stats.relinked_locally} relinked without a request"
    )
    stamp = {LINKING_GENERATION: str(stats.linking_generation)}
    yield dg.Output(
        {
            **{course: StampedFrame(frame, stamp) for course, frame in by_course.items()},
            **failures(failed),
            **{course: CourseUnchanged() for course in unchanged},
        },
        metadata={
            "memberships": stats.memberships,
            "already_linked": stats.already_linked,
            "looked_up": stats.looked_up,
            "gone_404": stats.gone,
            "linked_by_id": stats.linked_by_id,
            "linked_by_email": stats.linked_by_email,
            "relinked_locally": stats.relinked_locally,
            "kept_fetched_unlinked": stats.kept_unlinked,
            "ambiguous_emails_total": stats.ambiguous.height,
            "link_conflicts_total": stats.conflicts.height,
            "quarantined": dg.MetadataValue.json(reasons(stats.quarantine)),
            **_api_metadata(metrics),
            "api_seconds": round(api_seconds, 3),
            **run_peak_memory_metadata(),
        },
    )
    record_failed_partitions(context, stats.failed_courses, upstream_failed)
    fail_run_if_last(context, failed)


@dg.asset(
    group_name=GROUP,
    partitions_def=course_partitions,
    backfill_policy=BACKFILL_POLICY,
    description="Step two: each linked user's latest enrolment on the course, across runs and "
    "memberships (R5–R6).",
    **shown_in_ui("latest_enrolments", database=False),
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
    enrolments: PartitionFrames,
    linked_memberships: PartitionFrames,
    course_runs: pl.DataFrame,
):
    report_stale_inputs(context, ("course_runs", "enrolments"), list(enrolments))
    keys = course_keys(list(enrolments), course_runs)
    titles = steps.course_titles(course_runs)
    upstream_failed = {
        **unresolved_keys(list(enrolments), keys),
        **enrolments.failures(),
        **linked_memberships.failures(),
    }
    unchanged = enrolments.unchanged()
    failed: dict[str, str] = {}
    by_course: dict[str, StampedFrame | CourseFailure | CourseUnchanged] = {}
    duplicates = 0
    for key in enrolments:
        if key in upstream_failed:
            by_course[key] = CourseFailure(upstream_failed[key])
            continue
        course = keys.uuid_of_key[key]
        if key in unchanged:
            by_course[key] = CourseUnchanged()
            add_partition_metadata(
                context, {**course_metadata(course, titles), **unchanged_metadata()}, key
            )
            continue
        try:
            frame = steps.choose_latest(
                {course: enrolments[key]}, {course: linked_memberships[key]}, course_runs
            )[course]
        except Exception as error:  # one course's rules failing must not stop the others
            why = f"latest enrolments: {error_line(error)}"
            context.log.error(f"course {key}: {why}")
            add_partition_metadata(
                context, {**course_metadata(course, titles), **failed_metadata(why)}, key
            )
            failed[key] = why
            by_course[key] = CourseFailure(why)
            continue
        # What the frame is computed from travels with it, for activity_progress to record.
        by_course[key] = StampedFrame(
            frame, {**enrolments.stamps(key), **linked_memberships.stamps(key)}
        )
        duplicates += frame.height - frame["user_id"].n_unique()
        add_partition_metadata(
            context,
            {
                **course_metadata(course, titles),
                **frame_metadata(frame),
                "learners": frame.height,
                **rss_after_course(),
            },
            key,
        )
    yield dg.Output(by_course, metadata=run_peak_memory_metadata())
    yield dg.AssetCheckResult(
        check_name=ONE_LATEST_CHECK,
        passed=duplicates == 0,
        metadata={"courses": len(by_course), "duplicate_rows": duplicates},
    )
    record_failed_partitions(context, failed, upstream_failed)
    fail_run_if_last(context, {**upstream_failed, **failed})


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


@dg.asset(
    pool=pools.PLATFORM_WRITES,
    group_name=GROUP,
    partitions_def=course_partitions,
    backfill_policy=BACKFILL_POLICY,
    description="Step two: achievements' progress and state written from the latest enrolments "
    "(R7–R12), with links, transitions and completion events, one transaction per course. "
    "To rerun a course with fresh data, launch the job futurelearn_sync for its partition: "
    "materialising this asset alone re-applies the reports stored by an earlier run, and says so.",
    **shown_in_ui("activity_progress", database=True),
    freshness_policy=NIGHTLY_FRESHNESS,
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
    latest_enrolments: PartitionFrames,
    linked_memberships: PartitionFrames,
    enrolments: PartitionFrames,
    course_runs: pl.DataFrame,
    platform_database: PlatformDatabase,
):
    engine = platform_database.engine
    now = datetime.now(UTC)
    activity_of = dict(
        course_runs.filter("known").select("course_uuid", "activity_id").unique().iter_rows()
    )
    report_stale_inputs(context, ("course_runs", "enrolments"), list(latest_enrolments))
    keys = course_keys(list(latest_enrolments), course_runs)
    titles = steps.course_titles(course_runs)
    allowed = {keys.uuid(course) or course for course in config.allow_shrink_courses}
    breaker = steps.CircuitBreaker(config.max_shrink_share, frozenset(allowed))
    with engine.connect() as connection:
        previous = sync_store.last_course_states(connection, keys.uuid_of_key.values())
    unchanged = latest_enrolments.unchanged()
    tally: Counter[str] = Counter()
    failures: dict[str, str] = {}
    refused: dict[str, str] = {}
    unresolved = unresolved_keys(list(latest_enrolments), keys)

    def sync_one(key: str) -> tuple[steps.CourseOutcome | None, str | None]:
        if key in unresolved:
            return None, unresolved[key]
        course = keys.uuid_of_key[key]
        if course not in activity_of:
            return None, "no activity knows this course any more (R1)"
        try:
            outcome = steps.sync_course(
                engine,
                course,
                activity_of[course],
                enrolments[key],
                latest_enrolments[key],
                linked_memberships[key],
                now=now,
                previous_count=previous[course].enrolment_count if course in previous else None,
                breaker=breaker,
                dry_run=config.dry_run,
                dagster_run_id=context.run.run_id,
                applied_from=applied_from(latest_enrolments.stamps(key)),
                previous=previous.get(course),
            )
        except CourseFailed as error:  # an earlier step failed it; already logged there
            return None, error.reason
        except transactions.CourseBusyError as error:
            context.log.warning(f"course {key}: {error}")
            return None, str(error)
        except Exception as error:  # one course failing must not stop the others
            why = error_line(error)  # stored and sent: one line, no email
            context.log.error(f"course {key}: {why}")
            return None, why
        if outcome.applied is not None and outcome.applied.stale:
            context.log.warning(
                f"course {key}: {outcome.applied.stale} achievement changes not written: "
                "another writer changed them after they were planned"
            )
        if outcome.applied is not None and outcome.applied.rows_written:
            failpoints.reached("activity_progress.after_course_commit")
        return outcome, None

    # Each course's changes go to disk as soon as they are made: held all together they were
    # the largest value in the step (~440 MiB on `large`), growing through the write loop.
    with tempfile.TemporaryDirectory(prefix="activity_progress-") as spool_dir:
        changes = PartitionSpool(Path(spool_dir))
        for course in sorted(latest_enrolments):
            if course in unchanged:
                changes.add(course, CourseUnchanged())
                add_partition_metadata(
                    context,
                    {**course_metadata(keys.uuid(course), titles), **unchanged_metadata()},
                    course,
                )
                tally["skipped"] += 1
                continue
            outcome, failure = sync_one(course)
            if failure:
                failures[course] = failure
            frame = outcome.changes if outcome else _NO_CHANGES
            changes.add(course, frame)
            add_partition_metadata(
                context,
                {
                    **course_metadata(keys.uuid(course), titles),
                    **frame_metadata(frame),
                    **_outcome_metadata(outcome, failure, config),
                    **rss_after_course(),
                },
                course,
            )
            if outcome:
                tally.update(_outcome_counts(outcome))
                if outcome.refused:
                    refused[course] = outcome.refused
        context.log.info(progress_summary(tally, len(failures), config.dry_run))
        yield dg.Output(
            changes,
            metadata={
                "dry_run": config.dry_run,
                "failed": len(failures),
                "skipped_unchanged": tally["skipped"],
                **run_peak_memory_metadata(),
            },
        )
    yield dg.AssetCheckResult(
        check_name=SHRINK_CHECK,
        passed=not refused,
        description="Progress is not applied from a report that shrank by more than "
        f"{config.max_shrink_share:.0%} since the course's last successful sync; allow a course "
        "with the allow_shrink_courses config (or `sync-assets sync --allow-shrink UUID`).",
        metadata={"refused": dg.MetadataValue.json(refused)},
    )
    upstream_failed = latest_enrolments.failures()
    own = {course: why for course, why in failures.items() if course not in upstream_failed}
    record_failed_partitions(
        context,
        {**own, **refused},
        {course: why for course, why in failures.items() if course in upstream_failed},
    )
    fail_run_if_last(context, {**failures, **refused})


def failures(failed: dict[str, str]) -> dict[str, CourseFailure]:
    return {course: CourseFailure(why) for course, why in failed.items()}


def _outcome_metadata(
    outcome: steps.CourseOutcome | None, failure: str | None, config: ProgressConfig
) -> dict[str, Any]:
    if outcome is None:
        return {"status": "failed", "error": failure or ""}
    applied = outcome.applied
    status = "refused" if outcome.refused else "dry run" if config.dry_run else "applied"
    return {
        "status": status,
        "enrolments": outcome.enrolments,
        "learners": outcome.learners,
        "links_made": outcome.links_made,
        "achievements_created": outcome.created,
        "achievements_updated": outcome.updated,
        "achievements_completed": outcome.became("complete"),
        "achievements_dropped": outcome.became("dropped"),
        "transitions_written": applied.transitions if applied else 0,
        "completion_events_written": applied.completion_events if applied else 0,
        "programme_enrolments_written": applied.enrolments if applied else 0,
        "rows_written": applied.rows_written if applied else 0,
        # Planned from a state another writer had already changed: not written.
        "stale_changes_not_written": applied.stale if applied else 0,
        "sql_statements": outcome.sql_statements,
        "plan_seconds": round(outcome.plan_seconds, 4),
        "write_seconds": round(outcome.write_seconds, 4),
        **({"refused": outcome.refused} if outcome.refused else {}),
    }


def _outcome_counts(outcome: steps.CourseOutcome) -> Counter[str]:
    return Counter(
        courses=1,
        changed=int(not outcome.changes.is_empty()),
        created=outcome.created,
        updated=outcome.updated,
        completed=outcome.became("complete"),
    )


def progress_summary(tally: Counter[str], failed: int, dry_run: bool) -> str:
    """The step's one log line: how many courses were synced, and what changed in them.

    A night on which nothing changed says so, instead of a row of zeros.
    """
    synced = counted(tally["courses"], "course") + (" checked" if dry_run else " synced")
    if not tally["changed"]:
        line = f"{synced}, nothing {'would change' if dry_run else 'changed'}"
    else:
        verb = "would change" if dry_run else "changed"
        line = (
            f"{synced}: achievements {verb} in {counted(tally['changed'], 'course')} "
            f"({tally['created']} created, {tally['updated']} updated, "
            f"{tally['completed']} completed)"
        )
    if tally["skipped"]:
        line += f"; {counted(tally['skipped'], 'course')} skipped as unchanged"
    return line + (f"; {counted(failed, 'course')} failed" if failed else "")


def applied_from(stamps: dict[str, str]) -> steps.AppliedFrom | None:
    """What a course's latest enrolments were computed from, if they say (`StampedFrame`)."""
    if REPORT_FINGERPRINT not in stamps or LINKING_GENERATION not in stamps:
        return None
    return steps.AppliedFrom(stamps[REPORT_FINGERPRINT], int(stamps[LINKING_GENERATION]))


sync_assets_list = [
    course_runs,
    enrolments,
    linked_memberships,
    latest_enrolments,
    activity_progress,
]
