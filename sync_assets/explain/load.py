"""What an explanation is computed from: the platform database, the stored reports, the instance.

"The last stored reports" are the sync's own stored asset values, read through the IO manager
(`SYNC_ASSETS_STORAGE_URL`): `course_runs` and the course partition of `enrolments`, as the last
run that fetched them stored them. They are what the next `activity_progress` step would apply,
and the instance says when and by which run they were fetched. The HTTP cache is not used for
this: it keeps bodies per URL (and per page), for revalidation, not as a record of what a sync
used. With `fresh`, the reports (conditional requests) and the course's never-looked-up
memberships are fetched through the sync's own client and steps, and nothing is written (the HTTP
cache aside, which a later sync then revalidates as usual).

Reads only: no row is written to the platform database or to asset storage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.partitions import CourseKeys, course_partitions
from sync_assets.defs.sync.provenance import stored_input
from sync_assets.explain.explanation import Explanation, explain
from sync_assets.explain.inputs import (
    EVENT_SCHEMA,
    MEMBERSHIP_SCHEMA,
    TRANSITION_SCHEMA,
    Course,
    ExplainInputs,
    LastApplied,
)
from sync_assets.partners_api import contract
from sync_assets.partners_api.client import PartnersApiClient, run
from sync_assets.platform import sync_store
from sync_assets.platform.tables import (
    achievement_transitions,
    completion_events,
    programmes,
    users,
)
from sync_assets.rules.linking import email_key
from sync_assets.runs.courses import course_uuid_argument
from sync_assets.sync import fact_names, steps
from sync_assets.sync.outcomes import Failed

# How far back to look for the last materialisation that applied the course (not a dry run, not
# a failed or refused course): a few nights of reruns at most.
APPLIED_LOOKBACK = 50


class ExplainError(ValueError):
    """A request that cannot be explained, in one line saying what to do."""


def resolve_course(instance: dg.DagsterInstance, engine: Engine, argument: str) -> Course:
    """The course a `--course` argument names (uuid or partition key), known to the platform."""
    course_uuid = course_uuid_argument(instance, engine, argument)
    with engine.connect() as connection:
        known = sync_store.known_courses(connection).filter(pl.col("course_uuid") == course_uuid)
    if known.is_empty():
        raise ExplainError(f"course {course_uuid} is not a known course: no activity has it (R1)")
    partitions = instance.get_dynamic_partitions(course_partitions.name)
    key = CourseKeys.resolve(partitions, [course_uuid], [course_uuid]).key(course_uuid)
    return Course(course_uuid, key, known["title"][0] or "", known["activity_id"][0])


def _user(connection: Connection, user_id: str) -> dict:
    row = connection.execute(
        sa.select(users.c.id, users.c.email, users.c.forgotten).where(users.c.id == user_id)
    ).first()
    if row is None:
        raise ExplainError(f"no platform user with id {user_id!r}")
    return row._asdict()


def _stored_reports(
    instance: dg.DagsterInstance, io_manager: PartitionedParquetIOManager, course: Course
) -> tuple[pl.DataFrame, pl.DataFrame, datetime | None, str | None]:
    key = course.key
    rerun = f"run `sync-assets sync --course {key or course.uuid}`, or add --fresh"
    runs = io_manager.stored("course_runs")
    enrolments = io_manager.stored_outcome("enrolments", key) if key else None
    if runs is None or enrolments is None:
        raise ExplainError(f"no stored enrolment report for course {course.uuid} yet: {rerun}")
    if isinstance(enrolments, Failed):
        raise ExplainError(
            f"the last sync of course {course.uuid} stored no report, it failed: "
            f"{enrolments.reason}; {rerun}"
        )
    fetched = stored_input(instance, "enrolments", key)
    return (
        runs.filter(pl.col("course_uuid") == course.uuid).select(list(contract.COURSE_RUN_SCHEMA)),
        enrolments.frame.select(list(contract.ENROLMENT_SCHEMA)),
        fetched.at,
        fetched.run_id,
    )


def last_applied(instance: dg.DagsterInstance, key: str | None) -> LastApplied | None:
    """The course's last activity_progress materialisation that applied it."""
    if key is None:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("activity_progress"), asset_partitions=[key]),
        limit=APPLIED_LOOKBACK,
    ).records
    for record in records:
        materialization = record.asset_materialization
        status = materialization.metadata.get(fact_names.STATUS) if materialization else None
        if status is not None and status.value == fact_names.STATUS_APPLIED:
            return LastApplied(
                datetime.fromtimestamp(record.timestamp, UTC),
                record.run_id,
            )
    return None


def _concerns(user: dict) -> pl.Expr:
    """Memberships whose external id may name the user (R3: id, or email ignoring case)."""
    own_key = email_key(user["email"])
    external = pl.col("external_learner_id")
    return (external == user["id"]) | (
        external.map_elements(email_key, return_dtype=pl.String) == own_key
    )


def _membership_rows(
    connection: Connection, user: dict, course_memberships: Sequence[str]
) -> pl.DataFrame:
    """The user's memberships anywhere, and those on the course that may name them."""
    own = sync_store.stored_memberships(connection, user_id=user["id"])
    on_course = sync_store.stored_memberships(connection, course_memberships).filter(
        pl.col("user_id").is_not_null() | pl.col("external_learner_id").is_not_null()
    )
    relevant = on_course.filter((pl.col("user_id") == user["id"]) | _concerns(user))
    return (
        pl.concat([own, relevant])
        .unique("membership_uuid", keep="first", maintain_order=True)
        .with_columns(stored=pl.lit(True))
    )


def _memberships_of(
    engine: Engine, user: dict, report: pl.DataFrame
) -> tuple[pl.DataFrame, list[str]]:
    """The memberships that concern the user, and the report's memberships never looked up."""
    course_memberships = report["membership_uuid"].unique().to_list()
    with engine.connect() as connection:
        return (
            _membership_rows(connection, user, course_memberships),
            sync_store.memberships_to_look_up(connection, course_memberships),
        )


async def _fresh_reports(
    client: PartnersApiClient, engine: Engine, course: Course
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The course's runs and reports now, through the sync's own steps (conditional requests)."""
    fetched_runs = await steps.fetch_course_runs(client, engine)
    runs = fetched_runs.runs.filter(pl.col("course_uuid") == course.uuid)
    reports = await steps.fetch_enrolments(client, fetched_runs.runs, [course.uuid])
    failure = reports.failure(course.uuid)
    if failure:
        raise ExplainError(f"course {course.uuid}: {failure}")
    return runs.select(list(contract.COURSE_RUN_SCHEMA)), reports.frames()[course.uuid]


def _of_achievement(
    connection: Connection, achievement_id: int | None, table: sa.Table, schema: dict
) -> pl.DataFrame:
    """An achievement's rows of `table`; a JSON column comes back as its JSON text."""
    if achievement_id is None:
        return pl.DataFrame(schema=schema)
    columns = [table.c[name] for name in schema]
    rows = connection.execute(sa.select(*columns).where(table.c.achievement_id == achievement_id))
    return pl.DataFrame(
        [
            {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row._asdict().items()}
            for row in rows
        ],
        schema=schema,
        orient="row",
    )


async def load(
    instance: dg.DagsterInstance,
    engine: Engine,
    io_manager: PartitionedParquetIOManager,
    course_argument: str,
    user_id: str,
    *,
    now: datetime,
    client: Callable[[], PartnersApiClient] | None = None,
) -> ExplainInputs:
    """Everything `explain` needs; with `client`, the reports and unknown memberships fresh."""
    course = resolve_course(instance, engine, course_argument)
    with engine.connect() as connection:
        user = _user(connection, user_id)
    fresh = client is not None
    if client is None:
        runs, report, as_of, run_id = _stored_reports(instance, io_manager, course)
        memberships, unknown = _memberships_of(engine, user, report)
    else:
        async with client() as api:
            runs, report = await _fresh_reports(api, engine, course)
            memberships, unknown = _memberships_of(engine, user, report)
            if unknown:  # whose they are is only known by asking: asked, not stored
                looked_up = await api.memberships(unknown)
                found = looked_up.found.filter(_concerns(user)).with_columns(
                    fetched_at=pl.lit(now, sync_store.UTC_TIME), stored=pl.lit(False)
                )
                memberships = pl.concat([memberships, found], how="diagonal_relaxed")
                unknown = list(looked_up.failed)  # only those it could not answer stay unknown
        as_of, run_id = now, None
    memberships = memberships.select(
        [pl.col(name).cast(dtype) for name, dtype in MEMBERSHIP_SCHEMA.items()]
    )
    with engine.connect() as connection:
        external_ids = memberships["external_learner_id"].drop_nulls().to_list()
        candidates = sync_store.users_matching(connection, external_ids)
        linked = [*memberships["user_id"].drop_nulls().to_list(), user_id]
        linked_users = sync_store.users_by_id(connection, linked)
        achievement = sync_store.achievements_for_course(connection, course.activity_id, [user_id])
        achievement_id = achievement["id"][0] if achievement.height else None
        transitions = _of_achievement(
            connection, achievement_id, achievement_transitions, TRANSITION_SCHEMA
        )
        events = _of_achievement(connection, achievement_id, completion_events, EVENT_SCHEMA)
        enrolments = sync_store.programme_enrolments(connection, [user_id])
        activity_programmes = sync_store.activity_programmes(connection, [course.activity_id])
        slugs = dict(connection.execute(sa.select(programmes.c.id, programmes.c.slug)).all())
    titles = steps.course_titles(runs)
    if course.uuid in titles:
        course = Course(course.uuid, course.key, titles[course.uuid], course.activity_id)
    return ExplainInputs(
        course=course,
        user_id=user_id,
        users=pl.concat([candidates, linked_users]).unique("id", maintain_order=True),
        memberships=memberships,
        runs=runs,
        enrolments=report.filter(
            pl.col("membership_uuid").is_in(memberships["membership_uuid"].implode())
        ),
        reports_as_of=as_of,
        reports_fresh=fresh,
        reports_run_id=run_id,
        unknown_memberships=len(unknown),
        achievement=achievement,
        transitions=transitions,
        completion_events=events,
        programme_enrolments=enrolments,
        activity_programmes=activity_programmes,
        programme_slugs=slugs,
        last_applied=last_applied(instance, course.key),
        now=now,
    )


def explain_learner(
    instance: dg.DagsterInstance,
    engine: Engine,
    io_manager: PartitionedParquetIOManager,
    course_argument: str,
    user_id: str,
    *,
    client: Callable[[], PartnersApiClient] | None = None,
    other_user: Callable[[str], str] = str,
) -> Explanation:
    """Load, then explain: what the command and the Dagster job both run."""
    inputs = run(
        load(
            instance,
            engine,
            io_manager,
            course_argument,
            user_id,
            now=datetime.now(UTC),
            client=client,
        )
    )
    return explain(inputs, other_user=other_user)
