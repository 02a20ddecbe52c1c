"""Courses that fail inside a run show as failed partitions, the others as materialised.

One step serves every course partition of its run, and Dagster records a materialisation for
each of them as soon as the step's output is stored, whatever happened to each course (and a
step that raises after its output still counts as all materialised: upstream issue 21072).
So after the output, each failed course's partition gets what a failed step would have left:
a planned materialisation with none after it, then a failure event with the reason. The run
then ends failed (the last step of the sync that the run executes raises, naming the courses),
and Dagster's partition status counts those partitions as failed and the asset's health as
degraded; a later successful sync of the course makes it materialised again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.events import (
    AssetMaterializationFailure,
    AssetMaterializationFailureReason,
    AssetMaterializationFailureType,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

# The sync's assets in step order: a course failing in one fails it in those after it.
SYNC_STEP_ORDER = (
    "course_runs",
    "enrolments",
    "linked_memberships",
    "latest_enrolments",
    "activity_progress",
)


def failed_metadata(why: str) -> dict[str, Any]:
    return {"status": "failed", "error": why}


def record_failed_partitions(
    context: dg.AssetExecutionContext, failed: Mapping[str, str], upstream_failed: Mapping[str, str]
) -> None:
    """Mark each failed course's partition of this step's asset as failed in this run.

    Call after the step's output is stored. `failed` are the courses this step failed (why);
    `upstream_failed` those an earlier step failed, recorded here as failed upstream.
    """
    run = context.run
    step_key = str(context.op_execution_context.node_handle)  # an asset step is keyed by its op
    for partition, why in sorted({**upstream_failed, **failed}.items()):
        planned = DagsterEvent.build_asset_materialization_planned_event(
            run.job_name,
            step_key,
            AssetMaterializationPlannedData(context.asset_key, partition=partition),
        )
        context.instance.report_dagster_event(planned, run_id=run.run_id)
        failure = DagsterEvent.build_asset_failed_to_materialize_event(
            run.job_name,
            step_key,
            AssetMaterializationFailure(
                asset_key=context.asset_key,
                partition=partition,
                failure_type=AssetMaterializationFailureType.FAILED,
                reason=(
                    AssetMaterializationFailureReason.FAILED_TO_MATERIALIZE
                    if partition in failed
                    else AssetMaterializationFailureReason.UPSTREAM_FAILED_TO_MATERIALIZE
                ),
                description=why,
                metadata=failed_metadata(why),
            ),
        )
        context.instance.report_dagster_event(failure, run_id=run.run_id)


def is_last_sync_step(context: dg.AssetExecutionContext) -> bool:
    """Whether no later step of the sync runs in this run (a run may select some assets only)."""
    selected = context.run.asset_selection
    if not selected:  # the whole job (None, or empty from execute_in_process)
        return context.asset_key.to_user_string() == SYNC_STEP_ORDER[-1]
    names = {key.to_user_string() for key in selected}
    position = SYNC_STEP_ORDER.index(context.asset_key.to_user_string())
    return not names & set(SYNC_STEP_ORDER[position + 1 :])


def fail_run_if_last(context: dg.AssetExecutionContext, failed: Mapping[str, str]) -> None:
    """End the run failed, naming the courses, if this is the last sync step it executes."""
    if failed and is_last_sync_step(context):
        raise dg.Failure(
            description=f"{len(failed)} course(s) not synced: "
            + "; ".join(f"{course}: {why}" for course, why in sorted(failed.items())),
            metadata={"failed_courses": dg.MetadataValue.json(dict(failed))},
        )
