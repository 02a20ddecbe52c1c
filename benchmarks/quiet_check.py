"""A quiet night's check of the reports: a 304 read back from the cache against a 304 left unread.

    python -m benchmarks.quiet_check --workload teachcomputing --rounds 5

The night's check asks for every report of every course conditionally; on a quiet night each
page answers 304. It used to read each page's kept body back from the HTTP cache and digest it
to learn which report it was served (`enrolment_report`, what the check called); now the digest
kept with the body answers that (`report_version`). One simulator process (no latency: the
client's own time is what differs) serves the workload's reports; this process's client, on a
SQLite cache file filled by one night of 200s, then asks every report again in alternating
rounds, once each way. Both give the same digests (checked every round). Printed: each way's
wall seconds and the client's CPU seconds per round, and the ratios unread / read of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import SimulatorProcess
from sync_assets.partners_api.client import (
    ClientSettings,
    PartnersApiClient,
    RawReport,
    ReportVersion,
    or_failure,
)
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate

WAYS = ("read back", "unread")


async def check(settings: ClientSettings, runs: list[str], way: str) -> dict[str, Any]:
    """Every run's report asked once, as the check asks: the digests, not-modified flags, costs."""
    started, cpu = time.perf_counter(), time.process_time()
    async with PartnersApiClient(settings) as client:
        ask = client.enrolment_report if way == "read back" else client.report_version
        answers: list[RawReport | ReportVersion] = await client.fan_out(or_failure(ask), runs)
    failed = [answer for answer in answers if not isinstance(answer, RawReport | ReportVersion)]
    if failed:
        raise RuntimeError(f"{len(failed)} reports failed: {failed[0]}")
    return {
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "digests": {answer.run_uuid: answer.digest for answer in answers},
        "not_modified": all(answer.not_modified for answer in answers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = generate(args.workload).runs["run_uuid"].to_list()
    simulator = SimulatorProcess(args.workload, 0.0)
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings = ClientSettings(
                base_url=simulator.url,
                consumer_key=SIMULATOR_CONSUMER_KEY,
                consumer_secret=SIMULATOR_CONSUMER_SECRET,
                concurrency=args.concurrency,
                cache_url=str(Path(folder) / "cache.sqlite3"),
            )
            first = asyncio.run(check(settings, runs, "unread"))  # the 200s, stored
            rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
            for number in range(args.rounds):
                for way in WAYS if number % 2 == 0 else WAYS[::-1]:
                    night = asyncio.run(check(settings, runs, way))
                    if not night["not_modified"] or night["digests"] != first["digests"]:
                        raise RuntimeError(f"{way}: not the reports of the first night")
                    rounds[way].append(night)
            cache_bytes = (Path(folder) / "cache.sqlite3").stat().st_size
    finally:
        simulator.stop()
    medians = {
        way: {
            figure: statistics.median(night[figure] for night in nights)
            for figure in ("wall_seconds", "cpu_seconds")
        }
        for way, nights in rounds.items()
    }
    result = {
        "workload": args.workload,
        "reports": len(runs),
        "cache_bytes": cache_bytes,
        "rounds": args.rounds,
        "median": medians,
        "each_round": {
            way: [{f: round(n[f], 3) for f in ("wall_seconds", "cpu_seconds")} for n in nights]
            for way, nights in rounds.items()
        },
        "ratio_unread_over_read": {
            figure: round(medians["unread"][figure] / medians["read back"][figure], 3)
            for figure in ("wall_seconds", "cpu_seconds")
        },
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
