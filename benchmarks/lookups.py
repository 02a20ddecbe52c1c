"""Membership look-ups per second of the client, with and without `sniffio` importable.

    python -m benchmarks.lookups --look-ups 20000 --rounds 2

A first sync is mostly membership look-ups, and the client, not the wire, bounds them here. One
simulator process (`teachcomputing`, 20 ms latency) answers the same look-ups to the client in
this process, in alternating rounds: as installed, then with `sniffio` hidden (httpcore then
searches the import path for it, and fails, on every request). The ratio is within one script.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.harness import SimulatorProcess
from sync_assets.partners_api.client import ClientSettings, PartnersApiClient
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import generate


class _Hidden(importlib.abc.MetaPathFinder):
    """`sniffio` as if not installed: every other finder searches for it, in vain."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "sniffio":
            importlib.util.find_spec("sniffio_as_if_not_installed")
            raise ModuleNotFoundError("No module named 'sniffio'")


@contextmanager
def without_sniffio() -> Iterator[None]:
    saved = sys.modules.pop("sniffio", None)
    hidden = _Hidden()
    sys.meta_path.insert(0, hidden)
    try:
        yield
    finally:
        sys.meta_path.remove(hidden)
        if saved is not None:
            sys.modules["sniffio"] = saved


async def look_up(url: str, uuids: list[str], concurrency: int) -> float:
    settings = ClientSettings(
        base_url=url,
        consumer_key=SIMULATOR_CONSUMER_KEY,
        consumer_secret=SIMULATOR_CONSUMER_SECRET,
        concurrency=concurrency,
    )
    async with PartnersApiClient(settings) as client:
        started = time.perf_counter()
        found = await client.memberships(uuids)
        seconds = time.perf_counter() - started
    assert found.found.height == len(uuids), "every look-up answered"
    return len(uuids) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--look-ups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    uuids = generate("teachcomputing").memberships["membership_uuid"].to_list()[: args.look_ups]
    simulator = SimulatorProcess("teachcomputing", args.latency_ms)
    rates: dict[str, list[float]] = {"installed": [], "sniffio hidden": []}
    try:
        for _ in range(args.rounds):
            rates["installed"].append(asyncio.run(look_up(simulator.url, uuids, args.concurrency)))
            with without_sniffio():
                rates["sniffio hidden"].append(
                    asyncio.run(look_up(simulator.url, uuids, args.concurrency))
                )
    finally:
        simulator.stop()
    bound = 1000 / args.latency_ms * args.concurrency
    result = {
        "look_ups": len(uuids),
        "bound_per_second": bound,
        "per_second": {k: [round(v) for v in rounds] for k, rounds in rates.items()},
        "installed / hidden": round(sum(rates["installed"]) / sum(rates["sniffio hidden"]), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
