"""`sync-assets prune` and the weekly prune: run history older than N days is deleted (SPEC §7).

A run's history is its run record, its event log, its compute logs (stdout/stderr, on S3 in a
deployment) and its op outputs (op_outputs/<run id>/ beside the assets). Asset values are not
history (the IO manager keeps one object per asset and course, overwritten each night) and stay.

Never deleted: a run not finished (queued or in progress), and a run holding the latest
materialisation of an asset partition (or of an unpartitioned asset), a partition's latest
observation or failed attempt, or the latest evaluation of an asset check: the UI and the sync
read those (a course's last successful sync, its failed status and reason, what `explain` shows).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from sync_assets.defs.op_outputs import FOLDER as OP_OUTPUTS
from sync_assets.object_storage import ObjectStore
from sync_assets.runs.status import FINISHED
from sync_assets.settings import storage_url
from sync_assets.wording import counted


@dataclass(frozen=True)
class RunAge:
    """What choosing needs of a run: when it ended (or was last updated) and whether it did."""

    run_id: str
    finished: bool
    ended: datetime


def runs_to_delete(runs: Iterable[RunAge], cutoff: datetime, kept: frozenset[str]) -> list[str]:
    """The runs to delete: finished before `cutoff`, holding nothing in `kept`."""
    return [
        run.run_id for run in runs if run.finished and run.ended < cutoff and run.run_id not in kept
    ]


@dataclass(frozen=True)
class PruneReport:
    cutoff: datetime
    run_ids: list[str]
    events: int
    op_outputs: int
    kept_latest: int  # older runs kept because they hold a latest materialisation or evaluation
    dry_run: bool

    def summary(self) -> str:
        verb = "Would delete" if self.dry_run else "Deleted"
        return (
            f"{verb} {counted(len(self.run_ids), 'run')} finished before "
            f"{self.cutoff.isoformat(timespec='seconds')}: "
            f"{counted(self.events, 'event')}, their compute logs and "
            f"{counted(self.op_outputs, 'op output')}; "
            f"kept {counted(self.kept_latest, 'older run')} holding a latest materialisation, "
            "failed attempt or check evaluation"
        )


def latest_holders(
    instance: dg.DagsterInstance, check_keys: Iterable[dg.AssetCheckKey]
) -> frozenset[str]:
    """Runs holding the latest materialisation of an asset or asset partition, a partition's
    latest observation (a run that applied no course records its outcomes so) or latest failed
    attempt (a planned materialisation with none after it), or an asset check's latest
    evaluation."""
    storage = instance.event_log_storage
    held: set[str] = set()
    for asset_key in instance.get_asset_keys():
        latest = instance.get_latest_materialization_event(asset_key)
        if latest is not None:
            held.add(latest.run_id)
        for event_type, fetch in (
            (dg.DagsterEventType.ASSET_MATERIALIZATION, instance.fetch_materializations),
            (dg.DagsterEventType.ASSET_OBSERVATION, instance.fetch_observations),
        ):
            storage_ids = instance.get_latest_storage_id_by_partition(asset_key, event_type)
            if storage_ids:
                records = fetch(
                    dg.AssetRecordsFilter(
                        asset_key=asset_key, storage_ids=list(storage_ids.values())
                    ),
                    limit=len(storage_ids),
                ).records
                held.update(record.run_id for record in records)
        attempts = (
            storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                asset_key
            )
        )
        held.update(run_id for run_id, _ in attempts.values())
    for check_key in check_keys:
        evaluation = instance.get_latest_asset_check_evaluation_record(check_key)
        if evaluation is not None:
            held.add(evaluation.run_id)
    return frozenset(held)


def run_ages(instance: dg.DagsterInstance) -> list[RunAge]:
    return [
        RunAge(
            run_id=record.dagster_run.run_id,
            finished=record.dagster_run.status in FINISHED,
            ended=_ended(record),
        )
        for record in instance.get_run_records()
    ]


def _ended(record: dg.RunRecord) -> datetime:
    """When the run ended (a run that never started: when it was last updated), in UTC."""
    if record.end_time is not None:
        return datetime.fromtimestamp(record.end_time, tz=UTC)
    updated = record.update_timestamp
    return updated if updated.tzinfo else updated.replace(tzinfo=UTC)


def prune(
    instance: dg.DagsterInstance,
    older_than: timedelta,
    now: datetime,
    check_keys: Iterable[dg.AssetCheckKey],
    *,
    dry_run: bool = False,
) -> PruneReport:
    """Delete (or with `dry_run`, count) the history of runs finished more than `older_than`
    before `now`; idempotent."""
    cutoff = now - older_than
    ages = run_ages(instance)
    held = latest_holders(instance, check_keys)
    chosen = runs_to_delete(ages, cutoff, held)
    kept = len(runs_to_delete(ages, cutoff, frozenset())) - len(chosen)
    store = ObjectStore(storage_url())
    events = op_outputs = 0
    for run_id in chosen:
        events += len(instance.all_logs(run_id))
        outputs = store.keys(f"{OP_OUTPUTS}/{run_id}")
        op_outputs += len(outputs)
        if dry_run:
            continue
        for key in outputs:
            store.delete(key)
        # Log keys start with the run id (Dagster's local and S3 managers alike).
        instance.compute_log_manager.delete_logs(prefix=[run_id])
        instance.delete_run(run_id)  # the run and its event log
    return PruneReport(cutoff, chosen, events, op_outputs, kept, dry_run)
