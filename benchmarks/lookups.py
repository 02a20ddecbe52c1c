"""Membership look-ups per second, and the client's CPU per look-up: httpx's stack against aiohttp.

    python -m benchmarks.lookups --look-ups 20000 --rounds 2

A first sync is mostly membership look-ups, and the client, not the wire, bounded them through
httpx (~1 ms of CPU each). One simulator process (`teachcomputing`, 20 ms latency) answers the
same look-ups to the client in this process, in alternating rounds: on aiohttp (the client as
built, `lookups_wire`), then on the httpx wire (given to the client, as the in-process simulator
is). The simulator runs in its own process, so this process's CPU time is the client's. The
ratios are within one script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from benchmarks.harness import SimulatorProcess
from sync_assets.partners_api.client import ClientSettings, PartnersApiClient, httpx_wire
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate

PATHS = ("aiohttp", "httpx")


async def look_up(url: str, uuids: list[str], concurrency: int, path: str) -> tuple[float, float]:
    """Look-ups per second, and the client's CPU microseconds per look-up."""
    settings = ClientSettings(
        base_url=url,
        consumer_key=SIMULATOR_CONSUMER_KEY,
        consumer_secret=SIMULATOR_CONSUMER_SECRET,
        concurrency=concurrency,
    )
    wire = httpx_wire(concurrency, httpx.create_ssl_context()) if path == "httpx" else None
    async with PartnersApiClient(settings, wire) as client:
        started, cpu = time.perf_counter(), time.process_time()
        found = await client.memberships(uuids)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert found.found.height == len(uuids), "every look-up answered"
    assert client.metrics.count("organisation_membership", 200) == len(uuids), "each counted"
    return len(uuids) / seconds, cpu / len(uuids) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--look-ups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    uuids = generate("teachcomputing").memberships["membership_uuid"].to_list()[: args.look_ups]
    simulator = SimulatorProcess("teachcomputing", args.latency_ms)
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    try:
        for _ in range(args.rounds):
            for path in PATHS:
                rate, micros = asyncio.run(look_up(simulator.url, uuids, args.concurrency, path))
                rates[path].append(rate)
                cpu[path].append(micros)
    finally:
        simulator.stop()
    bound = 1000 / args.latency_ms * args.concurrency
    result = {
        "look_ups": len(uuids),
        "bound_per_second": bound,
        "per_second": {k: [round(v) for v in rounds] for k, rounds in rates.items()},
        "client_cpu_us_per_look_up": {k: [round(v) for v in rounds] for k, rounds in cpu.items()},
        "aiohttp / httpx (rate)": round(sum(rates["aiohttp"]) / sum(rates["httpx"]), 3),
        "aiohttp / httpx (cpu per look-up)": round(sum(cpu["aiohttp"]) / sum(cpu["httpx"]), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
