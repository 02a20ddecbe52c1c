"""What Dagster's per-partition metadata check costs a step, against listing the keys once.

    python -m benchmarks.partition_metadata --partitions 33 980

`context.add_asset_metadata(..., partition_key=k)` checks `k` against the step's partitions by
listing every dynamic partition from the instance, on each call; a step that adds metadata to
each of its N course partitions pays that N times (`defs.sync.course_step.add_partition_metadata`
lists them once a step). This times the check itself, on a real (SQLite) instance with N
dynamic partitions, and reports it per call and per sync (N calls in each of 4 steps).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from sync_assets.defs.sync.partitions import course_partitions

STEPS = 4  # enrolments, linked_memberships, latest_enrolments, activity_progress


def per_call_seconds(instance: dg.DagsterInstance, keys: list[str], calls: int) -> float:
    """Dagster's check, as add_asset_metadata makes it (system.py, Dagster 1.13)."""
    key_range = dg.PartitionKeyRange(keys[0], keys[-1])
    started = time.perf_counter()
    for _ in range(calls):
        with partition_loading_context(dynamic_partitions_store=instance):
            targeted = course_partitions.get_partition_keys_in_range(key_range)
        assert keys[-1] in targeted
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, nargs="+", default=[33, 980])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    for count in args.partitions:
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            keys = [f"course-{number:05d}" for number in range(count)]
            instance.add_dynamic_partitions(course_partitions.name, keys)
            per_call_seconds(instance, keys, 5)  # warm up
            per_call = per_call_seconds(instance, keys, args.calls)
            started = time.perf_counter()
            for _ in range(args.calls):
                once = frozenset(keys)  # what a step now does once
                assert keys[-1] in once
            set_call = (time.perf_counter() - started) / args.calls
            print(
                f"{count} partitions: Dagster's check {per_call * 1000:.2f} ms per call, "
                f"{per_call * count * STEPS:.1f} s per sync ({count} calls x {STEPS} steps); "
                f"listing once per step: {set_call * STEPS * 1000:.2f} ms per sync"
            )


if __name__ == "__main__":
    main()
