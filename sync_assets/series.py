"""Small facts about polars Series the sync relies on to avoid copies."""

from __future__ import annotations

import polars as pl


def sorted_and_distinct(keys: pl.Series) -> bool:
    """Whether `keys` is known sorted ascending, without repeats or nulls: then `unique()` and
    `sort()` would only copy it (a run's million membership uuids on `large`, ~50 MiB a copy).

    The sorted flag is polars' own (set by a sort); without it this says False, not a guess.
    """
    if not keys.flags["SORTED_ASC"] or keys.null_count():
        return False
    return len(keys) < 2 or not (keys.slice(1) == keys.slice(0, len(keys) - 1)).any()
