"""The simulator the product uses when FL_PARTNERS_URL is unset: in process, one per dataset."""

from __future__ import annotations

from functools import cache

from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import load


@cache
def embedded_simulator(dataset: str = "demo", seed: int = 1) -> PartnersApiSimulator:
    # Generated from the seed, so every process (every Dagster step) sees the same data.
    return PartnersApiSimulator(load(dataset, seed))
