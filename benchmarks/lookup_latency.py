"""A look-up's round trip against the served simulator, and the rate against the API's bound.

    python -m benchmarks.lookup_latency --rounds 6
    python -m benchmarks.lookup_latency --before 183c5f0 --rounds 12 --json results/x.json

A first sync is mostly membership look-ups, 16 in flight, each answered after the simulator's
latency (20 ms in the harness): at best `look-ups × latency / concurrency` seconds. This drives
them as a first sync does, through `PartnersApiClient.memberships` (aiohttp, `lookups_wire`),
against `sync-assets simulator serve --dataset teachcomputing` in a process of its own, as the
harness starts it, and reports the rate achieved over the bound and each look-up's round trip
past the latency (p50/p90/p99, timed around `LookupWire.get`: the wire, not the client's retry
or JSON parsing).

`--before COMMIT`: a second simulator, served from a `git archive` of the commit (ahead of the
editable install on the import path, as `benchmarks.simulator_speed`), runs beside the one as
built; the client as built drives them in short alternating rounds (before, after, after,
before, …; `--look-ups` each), so both see the same load as it moves. The ratio after / before
of each round pair is printed, and over all rounds. The machine is shared: read the ratios, not
the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import free_port
from benchmarks.simulator_speed import ROOT, before_tree
from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate

WORKLOAD = "teachcomputing"


class Served:
    """`sync-assets simulator serve` in its own process, from `tree` when given (else as built)."""

    def __init__(self, latency_ms: float, tree: Path | None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FL_PARTNERS_")}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        # Says which `sync_assets` it imported; run from elsewhere, as `-c` puts the working
        # directory first on the import path.
        code = "import sync_assets; print(sync_assets.__file__, flush=True); "
        code += "from sync_assets.cli import main; main()"
        command = [sys.executable, "-c", code]
        command += ["simulator", "serve", "--dataset", WORKLOAD, "--port", str(port)]
        command += ["--latency-ms", str(latency_ms)]
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        imported = Path(self.process.stdout.readline().strip()).parent
        if imported != (tree or ROOT) / "sync_assets":
            self.stop()
            raise RuntimeError(f"the simulator imported {imported}, not {tree or ROOT}")
        for line in self.process.stdout:  # the banner comes once the socket listens
            if line.startswith("Serving at"):
                break
        else:
            raise RuntimeError("the simulator did not start")
        counts = httpx.get(f"{self.url}/_simulator/counts", timeout=30)
        counts.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def look_up(url: str, uuids: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Look-ups per second, and each look-up's round trip in seconds."""
    settings = ClientSettings(
        base_url=url,
        consumer_key=SIMULATOR_CONSUMER_KEY,
        consumer_secret=SIMULATOR_CONSUMER_SECRET,
        concurrency=concurrency,
    )
    round_trips: list[float] = []
    async with PartnersApiClient(settings) as client:
        wire = client._lookups
        assert wire is not None, "look-ups go over aiohttp"
        get = wire.get

        async def timed(path: str, authorization: str, headers: Any = None) -> Any:
            started = time.perf_counter()
            answer = await get(path, authorization, headers)
            round_trips.append(time.perf_counter() - started)
            return answer

        wire.get = timed  # type: ignore[method-assign]
        started = time.perf_counter()
        found = await client.memberships(uuids)
        seconds = time.perf_counter() - started
    assert found.found.height == len(uuids), "every look-up answered"
    return len(uuids) / seconds, round_trips


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figures(look_ups: int, seconds: float, trips: list[float], args: argparse.Namespace) -> dict:
    bound = 1000 / args.latency_ms * args.concurrency
    rate = look_ups / seconds
    extra_ms = [trip * 1000 - args.latency_ms for trip in trips]
    return {
        "per_second": round(rate, 1),
        "bound_over_achieved": round(bound / rate, 3),
        "extra_ms": {
            "mean": round(statistics.fmean(extra_ms), 2),
            "p50": round(percentile(extra_ms, 0.5), 2),
            "p90": round(percentile(extra_ms, 0.9), 2),
            "p99": round(percentile(extra_ms, 0.99), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--look-ups", type=int, default=2_000, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", help="serve the simulator at this commit too, alternating")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    uuids = generate(WORKLOAD).memberships["membership_uuid"].to_list()
    variants = ("before", "after") if args.before else ("after",)
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    trips: dict[str, list[float]] = {variant: [] for variant in variants}
    seconds: dict[str, float] = dict.fromkeys(variants, 0.0)
    with tempfile.TemporaryDirectory(prefix="bench-lookup-latency-") as code:
        tree = before_tree(args.before, Path(code)) if args.before else None
        served = {
            variant: Served(args.latency_ms, tree if variant == "before" else None)
            for variant in variants
        }
        try:
            for number in range(args.rounds):
                # Each pair the other way round from the last: load that moves favours neither.
                order = variants if number % 2 == 0 else variants[::-1]
                for variant in order:
                    start = (number * len(variants) + order.index(variant)) * args.look_ups
                    chunk = uuids[start % len(uuids) :][: args.look_ups]
                    rate, round_trips = asyncio.run(
                        look_up(served[variant].url, chunk, args.concurrency)
                    )
                    rates[variant].append(rate)
                    trips[variant] += round_trips
                    seconds[variant] += len(chunk) / rate
                    print(variant, round(rate, 1), flush=True)
        finally:
            for server in served.values():
                server.stop()
    result: dict[str, Any] = {
        "workload": WORKLOAD,
        "look_ups_per_round": args.look_ups,
        "rounds": args.rounds,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "bound_per_second": 1000 / args.latency_ms * args.concurrency,
        **{
            variant: figures(len(trips[variant]), seconds[variant], trips[variant], args)
            for variant in variants
        },
        "per_second_each_round": {k: [round(r, 1) for r in v] for k, v in rates.items()},
    }
    if args.before:
        result["before_commit"] = args.before
        each = [a / b for b, a in zip(rates["before"], rates["after"], strict=True)]
        result["after / before (rate), each round"] = [round(r, 3) for r in each]
        result["after / before (rate), median of rounds"] = round(statistics.median(each), 3)
        result["after / before (rate), all rounds"] = round(seconds["before"] / seconds["after"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
