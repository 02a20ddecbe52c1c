"""Metadata a data engineer reads first, and nothing personal: no emails or external ids in clear.

Platform user ids can be a learner's external id (LTI launches), so previews show a pseudonym
instead: a keyed digest (HMAC), which no one without the key can compute from a list of ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl

from sync_assets.defs.sync.columns import PERSONAL, table_schema
from sync_assets.pseudonyms import pseudonym
from sync_assets.settings import pseudonym_key
from sync_assets.sync import fact_names

PSEUDONYMISED = ("user_id",)
PREVIEW_ROWS = 10


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


def frame_metadata(frame: pl.DataFrame, *, with_preview: bool) -> dict[str, Any]:
    """Row count, and a preview of the first rows if asked, for one asset (partition).

    No column schema: each asset's definition declares it once (`dagster/column_schema`,
    columns.py), and a copy on every partition's event was a large part of the event log.
    """
    return {
        fact_names.ROW_COUNT: frame.height,
        **({"preview": preview(frame)} if with_preview else {}),
    }
