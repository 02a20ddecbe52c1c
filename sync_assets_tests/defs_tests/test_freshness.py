"""activity_progress is fresh when a night was applied, late when none was by 06:00 London.

Dagster's own evaluator (the one the daemon runs) reads the event log of real syncs, each run at
a frozen time of night through the instance, on the nights around both clock changes of 2026
(29 March: 01:00 GMT becomes 02:00 BST; 25 October: 02:00 BST becomes 01:00 GMT).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.definitions.freshness import CronFreshnessPolicy, FreshnessState
from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time

from sync_assets.definitions import defs
from sync_assets.simulator.faults import FaultPlan
from sync_assets_tests.conftest import sqlite_only

from .conftest import REPORT, World

LONDON = ZoneInfo("Europe/London")


def _london(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=LONDON)


def _freshness(at: datetime) -> FreshnessState:
    """activity_progress's freshness at `at`, as the daemon evaluates it (the evaluator of its
    policy's type, on the instance's event log)."""
    node = defs.resolve_asset_graph().get(dg.AssetKey("activity_progress"))
    evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(node.freshness_policy)]()
    with freeze_time(at), dg.DagsterInstance.get() as instance:
        return asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))


class Nights:
    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.world, self.monkeypatch, self.tmp_path = world, monkeypatch, tmp_path

    def sync(self, at: datetime, *faults: str, cached: bool = True) -> str:
        """A sync of every course at `at`; `faults` on the Partners API. Not `cached`: an
        empty HTTP cache, so every report is sent afresh (a 304 carries no fault)."""
        self.world.simulator.faults = FaultPlan.parse(faults, seed=5)
        if not cached:
            cache = self.tmp_path / f"http-cache-{at:%m%d}.sqlite3"
            self.monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", str(cache))
        with freeze_time(at):
            result = self.world.sync()
        return result.output


@sqlite_only
def test_a_night_is_fresh_when_a_course_was_applied_and_late_when_none_was(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy = defs.resolve_asset_graph().get(dg.AssetKey("activity_progress")).freshness_policy
    assert isinstance(policy, CronFreshnessPolicy)
    assert (policy.deadline_cron, policy.timezone) == ("0 6 * * *", "Europe/London")
    nights = Nights(world, monkeypatch, tmp_path)
    assert _freshness(_london(3, 28, 1)) == FreshnessState.UNKNOWN  # never synced

    # Saturday 28 March (GMT): every course applied at 02:30.
    applied = nights.sync(_london(3, 28, 2, 30))
    assert "Error:" not in applied and "applied" in applied, applied
    assert _freshness(_london(3, 28, 6, 1)) == FreshnessState.PASS
    # Sunday 29 March, clocks forward: 05:59 BST is 03:29 after the 02:30 GMT sync, still fresh.
    assert _freshness(_london(3, 29, 5, 59)) == FreshnessState.PASS
    # That night every course fails (each report unreadable): no course applied, so at 06:00 BST
    # the asset is late, and stays late all day.
    failed = nights.sync(_london(3, 29, 2, 30), f"{REPORT}:malformed:rate=1", cached=False)
    assert "courses not applied (see above); the other 0 were applied" in failed, failed
    assert _freshness(_london(3, 29, 5, 59)) == FreshnessState.PASS
    assert _freshness(_london(3, 29, 6, 1)) == FreshnessState.FAIL
    assert _freshness(_london(3, 29, 23, 0)) == FreshnessState.FAIL
    # Monday's night is quiet: nothing changed, every course skipped as unchanged (applied).
    quiet = nights.sync(_london(3, 30, 2, 30))
    assert "unchanged" in quiet and "Error:" not in quiet, quiet
    assert _freshness(_london(3, 30, 6, 1)) == FreshnessState.PASS
    assert _freshness(_london(3, 31, 5, 59)) == FreshnessState.PASS
    assert _freshness(_london(3, 31, 6, 1)) == FreshnessState.FAIL  # no night on the 31st

    # Sunday 25 October, clocks back at 02:00 BST: a night on which some courses fail is applied.
    # The reports that changed come back unreadable; the others are unchanged (304s).
    assert world.simulator.advance_day()["changed_reports"]
    partly = nights.sync(_london(10, 25, 2, 30), f"{REPORT}:malformed:rate=1")
    assert "courses not applied (see above)" in partly, partly
    assert "the other 0 were" not in partly, partly
    assert _freshness(_london(10, 25, 6, 1)) == FreshnessState.PASS
    # 06:00 GMT on Monday is 27 h 30 min after the sync, yet fresh until then, and late after.
    assert _freshness(_london(10, 26, 5, 59)) == FreshnessState.PASS
    assert _freshness(_london(10, 26, 6, 1)) == FreshnessState.FAIL
