"""One partition per known FutureLearn course (R1), added as courses appear in the API."""

from __future__ import annotations

import dagster as dg

course_partitions = dg.DynamicPartitionsDefinition(name="course")


def course_chunks(partition_keys: list[str], per_run: int | None) -> list[list[str]]:
    """Consecutive course partitions in runs of at most `per_run` (None: all in one run).

    Consecutive, in the partitions' own order, because a run covers a partition *range*.
    """
    if not partition_keys:
        return []
    if per_run is None:
        return [list(partition_keys)]
    return [
        list(partition_keys[start : start + per_run])
        for start in range(0, len(partition_keys), per_run)
    ]
