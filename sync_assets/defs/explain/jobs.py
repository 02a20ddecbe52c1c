"""The explain job: launch it from the launchpad with a course and a user; read its Markdown."""

import dagster as dg
from pydantic import Field

from sync_assets.defs.resources import PartnersApi, PlatformDatabase
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.explain.load import ExplainError, explain_learner
from sync_assets.explain.render import as_markdown
from sync_assets.pseudonyms import pseudonym
from sync_assets.settings import ConfigurationError

EXPLAIN_TAGS = {"sync_assets/kind": "explain"}


class ExplainConfig(dg.Config):
    course: str = Field(description="The course: its uuid or its partition key")
    user: str = Field(description="The platform user id of the learner")
    fresh: bool = Field(
        default=False,
        description="Fetch the course's reports (conditional requests) and its memberships never "
        "looked up before explaining; nothing is written",
    )


@dg.op(
    description="Why the platform shows what it shows for one learner on one course, from the "
    "stored reports and the platform database; writes nothing.",
    out=dg.Out(io_manager_key="op_io_manager"),
)
def explain_learner_op(
    context: dg.OpExecutionContext,
    config: ExplainConfig,
    partners_api: PartnersApi,
    platform_database: PlatformDatabase,
    io_manager: dg.ResourceParam[PartitionedParquetIOManager],
) -> dg.Output[dict]:
    try:
        explanation = explain_learner(
            context.instance,
            platform_database.engine,
            io_manager,
            config.course,
            config.user,
            client=partners_api.client if config.fresh else None,
            other_user=pseudonym,  # kept in the instance: others by digest, as all metadata
        )
    except (ExplainError, ConfigurationError) as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(f"user {config.user}: {explanation.verdict}")
    # The operator asked about this user: their platform id is shown. Emails and external
    # learner ids never are: the explanation holds none.
    return dg.Output(
        explanation.to_dict(),
        metadata={
            "user_id": config.user,
            "course_uuid": explanation.course_uuid,
            "agrees": explanation.agrees,
            "verdict": explanation.verdict,
            "fix": explanation.fix or "",
            "explanation": dg.MetadataValue.md(as_markdown(explanation)),
        },
    )


@dg.job(tags=EXPLAIN_TAGS, executor_def=dg.in_process_executor)
def explain_learner_job() -> None:
    """Explain one learner's progress on one course (`sync-assets explain` in the UI)."""
    explain_learner_op()
