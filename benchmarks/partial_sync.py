"""`sync-assets sync` over a slice of the course partitions, in one run, with its phases timed.

    python -m benchmarks.partial_sync --start 0 --count 150

What `sync` does for all courses (bring the partitions up to date, run the sync job over them,
then the certificate work), but only for partitions [start, start + count) of the instance's
partition order, as one run: a chunk of a workload too big to sync whole here (`huge`), measured
in a process of its own as a deployed run is. The last line printed is JSON: the seconds of each
phase (opening the instance and code location, the partition update, the sync run, the
certificate work), the run ids and whether they succeeded.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.runs.execution import code_location_runs
    from sync_assets.runs.instance import open_instance
    from sync_assets.runs.launch import launch_sync, prepare_partitions, run_certificate_work
    from sync_assets.settings import check_settings

    check_settings()
    create_platform_engine().dispose()
    phases: dict[str, float] = {"imports": time.perf_counter() - started}
    mark = time.perf_counter()
    with open_instance() as instance, code_location_runs(instance) as runs:
        phases["open_instance"] = time.perf_counter() - mark
        mark = time.perf_counter()
        partitions = prepare_partitions(instance, None)
        phases["partition_update"] = time.perf_counter() - mark
        chunk = partitions[args.start : args.start + args.count]
        mark = time.perf_counter()
        report = launch_sync(runs, chunk, all_courses=True, say=lambda _: None)
        phases["sync_runs"] = time.perf_counter() - mark
        mark = time.perf_counter()
        run_certificate_work(runs, report, submit=False, say=lambda _: None)
        phases["certificates"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started
    print(
        json.dumps(
            {
                "partitions": len(partitions),
                "chunk": len(chunk),
                "run_ids": report.run_ids,
                "success": report.success,
                "failures": report.failures,
                "phases_seconds": {name: round(value, 2) for name, value in phases.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
