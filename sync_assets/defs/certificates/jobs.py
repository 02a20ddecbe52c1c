"""Certificate jobs: C1 and C3 for a batch of completion events; C2 numbering every day."""

import dagster as dg
from pydantic import Field

from sync_assets.defs import pools
from sync_assets.defs.resources import PlatformDatabase
from sync_assets.defs.retries import NO_RUN_RETRY_ON_STEP_FAILURE, transient_errors_retried
from sync_assets.platform import certificate_store
from sync_assets.sync import fact_names

# A run that fails for its data is not run again (the daemon's run retry is for a run whose
# process died); a transient database error retries the step (defs/retries.py).
CERTIFICATE_TAGS = {"sync_assets/kind": "certificates", **NO_RUN_RETRY_ON_STEP_FAILURE}
# Op results are small counts, stored as JSON (defs/op_outputs.py), not in the parquet store.
OP_RESULTS = dg.Out(io_manager_key="op_io_manager")


class CompletionEventsConfig(dg.Config):
    event_ids: list[int] = Field(
        default_factory=list, description="Completion events to handle; empty: every pending one"
    )


@dg.op(
    pool=pools.PLATFORM_DB,
    description="C1 and C3 for each event, its effects and its marking in one transaction.",
    out=OP_RESULTS,
)
def handle_completion_events(
    context: dg.OpExecutionContext,
    config: CompletionEventsConfig,
    platform_database: PlatformDatabase,
) -> dg.Output[int]:
    engine = platform_database.engine
    event_ids = config.event_ids
    # Each chunk of events commits with its marking: a retry finds those handled and skips them.
    with transient_errors_retried(context):
        if not event_ids:
            with engine.connect() as connection:
                event_ids = certificate_store.pending_event_ids(connection)
        batch = certificate_store.handle_completion_events(engine, event_ids)
    for refusal in batch.refused:
        context.log.warning(refusal)
    context.log.info(
        f"{batch.handled} events handled ({batch.skipped} already handled elsewhere): "
        f"{batch.moved_to_pending} enrolments moved to pending, "
        f"{batch.notifications_written} notifications written"
    )
    needed_nothing = {
        outcome: count
        for outcome, count in batch.outcomes.items()
        if outcome not in ("moved_to_pending", "notified")
    }
    return dg.Output(
        batch.handled,
        metadata={
            "events_requested": len(event_ids),
            fact_names.EVENTS_HANDLED: batch.handled,
            "events_already_handled": batch.skipped,
            fact_names.ENROLMENTS_MOVED_TO_PENDING: batch.moved_to_pending,
            fact_names.NOTIFICATIONS_WRITTEN: batch.notifications_written,
            "events_needing_nothing": dg.MetadataValue.json(needed_nothing),
            "why": dg.MetadataValue.json(batch.details),
            "refused_transitions": dg.MetadataValue.json(batch.refused),
        },
    )


@dg.op(
    pool=pools.PLATFORM_DB,
    description="C2: pending for seven days and not flagged → complete, numbered in turn.",
    out=OP_RESULTS,
)
def complete_due_certificates(
    context: dg.OpExecutionContext, platform_database: PlatformDatabase, handled: int
) -> dg.Output[int]:
    with transient_errors_retried(context):  # numbers are given in the transaction that commits
        certified = certificate_store.complete_due_certificates(platform_database.engine)
    for refusal in certified.refused:
        context.log.info(refusal)
    total = sum(len(numbers) for numbers in certified.completed.values())
    return dg.Output(
        total,
        metadata={
            fact_names.CERTIFICATES_ISSUED: total,
            fact_names.NUMBERS_BY_PROGRAMME: dg.MetadataValue.json(certified.completed),
            "refused": dg.MetadataValue.json(certified.refused),
        },
    )


@dg.job(tags=CERTIFICATE_TAGS, executor_def=dg.in_process_executor)
def certificate_job() -> None:
    """C1 and C3 for a batch of completion events (launched by the completion events sensor)."""
    handle_completion_events()


@dg.job(tags=CERTIFICATE_TAGS, executor_def=dg.in_process_executor)
def daily_certificates_job() -> None:
    """Sweep any completion event still pending, then issue the certificates that are due (C2)."""
    complete_due_certificates(handled=handle_completion_events())
