"""The resync job: launch it from the launchpad, GraphQL or `sync-assets resync`."""

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from sync_assets.defs import pools
from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.retries import NO_RUN_RETRY_ON_STEP_FAILURE, retry_if_transient
from sync_assets.error_text import error_line
from sync_assets.partners_api.client import run
from sync_assets.pseudonyms import pseudonym
from sync_assets.sync import fact_names
from sync_assets.sync.resync import ResyncError, resync_learners

RESYNC_TAGS = {"sync_assets/kind": "resync", **NO_RUN_RETRY_ON_STEP_FAILURE}


class ResyncConfig(dg.Config):
    course_uuid: str = Field(description="The FutureLearn course uuid")
    user_ids: list[str] = Field(description="Platform user ids of the learners to resync")


@dg.op(
    pool=pools.PLATFORM_DB,
    description="Both steps of the sync for the chosen learners of one course, nobody else.",
    out=dg.Out(io_manager_key="op_io_manager"),
)
def resync_learners_op(
    context: dg.OpExecutionContext,
    config: ResyncConfig,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
) -> dg.Output[list[dict]]:
    engine = platform_database.engine

    async def resync():
        async with partners_api.client() as client:
            result = await resync_learners(
                client,
                engine,
                config.course_uuid,
                config.user_ids,
                now=datetime.now(UTC),
                dagster_run_id=context.run.run_id,
            )
            return result, client.metrics

    try:
        result, metrics = run(resync())
    except ResyncError as error:  # its text is kept in the event log: users by pseudonym
        raise dg.Failure(description=error.describe(by_position(config.user_ids))) from None
    except Exception as error:  # a database error's full text quotes statements and values
        retry_if_transient(context, error)  # the course's write is one transaction
        raise dg.Failure(description=f"resync failed: {error_line(error)}") from None
    applied = result.outcome.applied if result.outcome else None
    context.log.info(
        f"resync of {len(result.outcomes)} learners: {dict(Counter(result.outcomes.values()))}"
    )
    # The operator knows the ids given; the output (kept in storage) and its metadata (kept in
    # the event log) show them in that order, by pseudonym: no user id in clear.
    outcomes = [
        {"position": i + 1, "user": pseudonym(user), "outcome": outcome}
        for i, (user, outcome) in enumerate(result.outcomes.items())
    ]
    return dg.Output(
        outcomes,
        metadata={
            fact_names.RESYNC_OUTCOMES: dg.MetadataValue.json(outcomes),
            "counts": dg.MetadataValue.json(dict(Counter(result.outcomes.values()))),
            fact_names.TRANSITIONS_WRITTEN: applied.transitions if applied else 0,
            fact_names.COMPLETION_EVENTS_WRITTEN: applied.completion_events if applied else 0,
            fact_names.API_REQUESTS: metrics.total_requests,
            fact_names.API_NOT_MODIFIED: metrics.not_modified,
        },
    )


def by_position(user_ids: list[str]) -> Callable[[str], str]:
    """How a stored error names a user given to the resync: position in the list, pseudonym."""
    positions = {user: i + 1 for i, user in reversed(list(enumerate(user_ids)))}
    return lambda user: (
        f"#{positions[user]} {pseudonym(user)}" if user in positions else pseudonym(user)
    )


@dg.job(tags=RESYNC_TAGS, executor_def=dg.in_process_executor)
def resync_learners_job() -> None:
    """Resync chosen learners of one course now (S2); certificate work follows as usual."""
    resync_learners_op()
