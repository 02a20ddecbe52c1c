"""Metadata a data engineer reads first, and nothing personal: no emails or external ids in clear.

Platform user ids can be a learner's external id (LTI launches), so previews show a pseudonym
instead: a keyed digest (HMAC), which no one without the key can compute from a list of ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import resource
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from sync_assets.defs.sync.columns import PERSONAL, table_schema
from sync_assets.settings import pseudonym_key

PSEUDONYMISED = ("user_id",)
PREVIEW_ROWS = 10
# 16 hex characters, 64 bits: two users of a platform sharing a pseudonym is then unlikely.
PSEUDONYM_HEX_CHARS = 16


def pseudonym(value: str | None, key: bytes | None = None) -> str | None:
    """`user:` and the HMAC-SHA256 of `value` under SYNC_ASSETS_PSEUDONYM_KEY (or `key`).

    A plain hash of a user id could be reversed by hashing every id of the platform; without the
    key it cannot. The same key gives the same pseudonym in every run and process.
    """
    if value is None:
        return None
    digest = hmac.new(key or pseudonym_key(), value.encode(), hashlib.sha256).hexdigest()
    return "user:" + digest[:PSEUDONYM_HEX_CHARS]


def safe(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame without personal columns, and with user ids replaced by pseudonyms."""
    kept = frame.drop([name for name in PERSONAL if name in frame.columns])
    key = pseudonym_key()  # read once, not for each cell
    return kept.with_columns(
        [
            pl.col(name).map_elements(lambda value: pseudonym(value, key), return_dtype=pl.String)
            for name in PSEUDONYMISED
            if name in kept.columns
        ]
    )


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return table_schema(safe(frame.head(0)).schema)


def _cell(value: Any) -> str | int | float | bool | None:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def preview(frame: pl.DataFrame, rows: int = PREVIEW_ROWS) -> dg.TableMetadataValue:
    shown = safe(frame.head(rows))
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({name: _cell(value) for name, value in row.items()})
            for row in shown.iter_rows(named=True)
        ],
        schema=column_schema(frame),
    )


def frame_metadata(frame: pl.DataFrame) -> dict[str, Any]:
    """Row count, column schema and a preview, for one asset partition."""
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": column_schema(frame),
        "preview": preview(frame),
    }


def reasons(quarantine: pl.DataFrame) -> dict[str, int]:
    if quarantine.is_empty():
        return {}
    return dict(quarantine.group_by("reason").len().sort("reason").iter_rows())


def run_peak_memory_metadata() -> dict[str, float]:
    """The run's peak resident memory so far, on the step's output (so on each of its courses).

    The sync's steps serve every course of the run at once, so this is a figure of the run, the
    same on all its partitions: compare it across runs (a command executing several runs starts
    the count afresh for each, see runs/execution.py). Per course, see `rss_after_course`.
    """
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"run_peak_rss_mib": round(peak_kib / 1024, 1)}


def rss_after_course() -> dict[str, float]:
    """Resident memory now, just after a course was processed: plotted by partition in the UI,
    it shows memory growing (or not) as a run works through its courses. Linux only."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    return {"rss_mib_after_course": round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)}


def linking_problems_metadata(ambiguous: pl.DataFrame, conflicts: pl.DataFrame) -> dict[str, Any]:
    """What linking left for the platform team, users as pseudonyms (`pseudonym(user_id)`).

    `ambiguous`: memberships whose external id is the email of several users (not linked).
    `conflicts`: stored links the external id disagrees with (kept, not re-pointed).
    """
    key = pseudonym_key()
    return {
        "ambiguous_emails": ambiguous.height,
        "ambiguous_email_users": dg.MetadataValue.json(
            [[pseudonym(user, key) for user in users] for users in ambiguous["user_ids"].to_list()]
        ),
        "link_conflicts": conflicts.height,
        "link_conflict_users": dg.MetadataValue.json(
            [
                {"linked": pseudonym(linked, key), "external_id_names": pseudonym(matching, key)}
                for linked, matching in conflicts.select(
                    "linked_user_id", "matching_user_id"
                ).iter_rows()
            ]
        ),
    }


# Each step's partition keys, computed once per step (see add_partition_metadata).
_STEP_PARTITIONS: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def add_partition_metadata(
    context: dg.AssetExecutionContext, metadata: dict[str, Any], partition_key: str
) -> None:
    """`context.add_asset_metadata(metadata, partition_key=…)`, with its check done once a step.

    Dagster's own call checks the key against the step's partitions by listing every dynamic
    partition from the instance, on each call: a step that adds metadata to each of its courses
    pays courses² (measured in benchmarks/analysis.md). Here the step's keys are listed once and
    the metadata goes to the same accumulator Dagster's call feeds (a private attribute of the
    pinned Dagster version: the end-to-end tests read every course's summary line back from it).
    """
    step = context.op_execution_context._step_execution_context
    keys = _STEP_PARTITIONS.get(step)
    if keys is None:
        keys = _STEP_PARTITIONS[step] = frozenset(context.partition_keys)
    if partition_key not in keys:
        raise dg.DagsterInvariantViolationError(
            f"Attempted to add metadata for partition key '{partition_key}' that is not being "
            "targeted."
        )
    step._metadata_accumulator = step._metadata_accumulator.with_additional_asset_metadata(
        asset_key=context.assets_def.key, partition_key=partition_key, metadata=metadata
    )
