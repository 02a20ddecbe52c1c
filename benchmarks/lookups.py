"""Membership look-ups per second, and the client's CPU per look-up: httpx's stack against aiohttp.

    python -m benchmarks.lookups --look-ups 20000 --rounds 2
    python -m benchmarks.lookups --before db260ec --rounds 5

A first sync is mostly membership look-ups, and the client, not the wire, bounded them through
httpx (~1 ms of CPU each). One simulator process (`teachcomputing`, 20 ms latency) answers the
same look-ups to the client in this process, in alternating rounds: on aiohttp (the client as
built, `lookups_wire`), then on the httpx wire (given to the client, as the in-process simulator
is). The simulator runs in its own process, so this process's CPU time is the client's. The
ratios are within one script.

`--before COMMIT`: the client as built against the client at a commit instead, both on aiohttp,
each round a child process of its own (`before` from a `git archive` of the commit, ahead of the
editable install on the import path, as `benchmarks.simulator_speed`), alternating before, after,
after, before, … against the one simulator. The ratio after / before of each round pair is
printed, to show the spread: the machine's load moves between rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import SimulatorProcess
from benchmarks.simulator_speed import ROOT, before_tree
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


def child(url: str, look_ups: int, concurrency: int) -> None:
    """One round on aiohttp, in this process: the `sync_assets` on its import path."""
    import sync_assets

    uuids = generate("teachcomputing").memberships["membership_uuid"].to_list()[:look_ups]
    rate, micros = asyncio.run(look_up(url, uuids, concurrency, "aiohttp"))
    imported = str(Path(sync_assets.__file__).parent)
    print(json.dumps({"sync_assets": imported, "per_second": rate, "cpu_us": micros}))


def run_child(url: str, args: argparse.Namespace, tree: Path | None) -> dict[str, Any]:
    # Run as a script, not with -m: the working directory would come first on the import path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (tree, ROOT) if p)}
    command = [sys.executable, __file__, "--child", url]
    command += ["--look-ups", str(args.look_ups), "--concurrency", str(args.concurrency)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (tree or ROOT) / "sync_assets"
    if Path(figures["sync_assets"]) != expected:
        raise RuntimeError(f"the child imported {figures['sync_assets']}, not {expected}")
    return figures


def before_and_after(args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of the client at `args.before` and as built, alternating, and their ratios."""
    simulator = SimulatorProcess("teachcomputing", args.latency_ms)
    rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-lookups-before-") as code:
            tree = before_tree(args.before, Path(code))
            for number in range(args.rounds):
                # Each pair in turn the other way round: a load that moves within a pair
                # favours neither variant over the rounds.
                order = ("before", "after") if number % 2 == 0 else ("after", "before")
                for variant in order:
                    code_tree = tree if variant == "before" else None
                    rounds[variant].append(run_child(simulator.url, args, code_tree))
    finally:
        simulator.stop()
    pairs = list(zip(rounds["before"], rounds["after"], strict=True))
    cpu = [after["cpu_us"] / before["cpu_us"] for before, after in pairs]
    rate = [after["per_second"] / before["per_second"] for before, after in pairs]
    return {
        "before_commit": args.before,
        "look_ups": args.look_ups,
        "bound_per_second": 1000 / args.latency_ms * args.concurrency,
        "per_second": {k: [round(r["per_second"]) for r in v] for k, v in rounds.items()},
        "client_cpu_us_per_look_up": {
            k: [round(r["cpu_us"]) for r in v] for k, v in rounds.items()
        },
        "after / before (cpu per look-up), each round": [round(r, 3) for r in cpu],
        "after / before (rate), each round": [round(r, 3) for r in rate],
        "after / before (cpu per look-up), all rounds": round(
            sum(r["cpu_us"] for r in rounds["after"]) / sum(r["cpu_us"] for r in rounds["before"]),
            3,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--look-ups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", help="compare the client as built with the one at this commit")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a simulator's URL: one round
    args = parser.parse_args()
    if args.child:
        child(args.child, args.look_ups, args.concurrency)
        return
    if args.before:
        print(json.dumps(before_and_after(args), indent=2))
        return
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
