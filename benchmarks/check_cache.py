"""The night's check with its HTTP cache's SQLite calls on the event loop against on a thread.

    python -m benchmarks.check_cache --workload large --rounds 2

Every report of the workload asked once, as a next day's check asks them (`report_version`, 16
in flight, 20 ms latency from one simulator process), each round on a new SQLite cache file, so
every answer is a 200 stored whole. Two ways, in alternating rounds: the cache's connection as
anysqlite makes it (each SQLite call sent to a worker thread and back, one at a time), and as
`open_storage` makes it (`InlineConnection`: each call on the event loop's thread). Printed:
each way's wall and CPU seconds per round, and the ratios inline / threaded of the medians.
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

import anysqlite

from benchmarks.harness import SimulatorProcess
from sync_assets.partners_api import cache
from sync_assets.partners_api.client import ClientSettings, PartnersApiClient, or_failure
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate

WAYS = ("threaded", "inline")
LATENCY_MS = 20.0


async def check(url: str, runs: list[str], folder: Path) -> dict[str, float]:
    settings = ClientSettings(
        base_url=url,
        consumer_key=SIMULATOR_CONSUMER_KEY,
        consumer_secret=SIMULATOR_CONSUMER_SECRET,
        concurrency=16,
        cache_url=str(folder / "cache.sqlite3"),
    )
    started, cpu = time.perf_counter(), time.process_time()
    async with PartnersApiClient(settings) as client:
        answers = await client.fan_out(or_failure(client.report_version), runs)
    failed = [answer for answer in answers if isinstance(answer, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} reports failed: {failed[0]}")
    return {"wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def night(url: str, runs: list[str], way: str) -> dict[str, float]:
    inline = cache.InlineConnection
    cache.InlineConnection = anysqlite.Connection if way == "threaded" else inline  # type: ignore[misc]
    try:
        with tempfile.TemporaryDirectory() as folder:
            return asyncio.run(check(url, runs, Path(folder)))
    finally:
        cache.InlineConnection = inline  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = generate(args.workload).runs["run_uuid"].to_list()
    simulator = SimulatorProcess(args.workload, LATENCY_MS)
    try:
        night(simulator.url, runs, "inline")  # the simulator builds its reports once
        rounds: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for number in range(args.rounds):
            for way in WAYS if number % 2 == 0 else WAYS[::-1]:
                rounds[way].append(night(simulator.url, runs, way))
                print(way, rounds[way][-1], flush=True)
    finally:
        simulator.stop()
    medians = {
        way: {f: statistics.median(n[f] for n in nights) for f in ("wall_seconds", "cpu_seconds")}
        for way, nights in rounds.items()
    }
    result: dict[str, Any] = {
        "workload": args.workload,
        "reports": len(runs),
        "latency_ms": LATENCY_MS,
        "each_round": {
            way: [{f: round(v, 3) for f, v in n.items()} for n in nights]
            for way, nights in rounds.items()
        },
        "ratio_inline_over_threaded": {
            f: round(medians["inline"][f] / medians["threaded"][f], 3)
            for f in ("wall_seconds", "cpu_seconds")
        },
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
