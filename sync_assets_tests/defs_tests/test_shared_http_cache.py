"""The HTTP cache shared in Redis by a deployment whose every run is a fresh container."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pytest

from sync_assets.partners_api import cache

from .conftest import REPORT, SECRET, World, make_world

if TYPE_CHECKING:
    from sync_assets_tests.conftest import RedisCache

PASSWORD = "a-redis-password-never-to-be-seen"


@pytest.fixture
def sqlite_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(f"sqlite:///{tmp_path / 'platform.sqlite3'}", tmp_path, monkeypatch)


def new_container(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Another working directory with an empty disk: its own data folder and Dagster home."""
    (root / "dagster_home").mkdir(parents=True)
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    monkeypatch.setenv("SYNC_ASSETS_DATA_DIR", str(root / "data"))
    return root


def everything_dagster_recorded() -> str:
    """Every run's config and tags and every event of it, as text."""
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert runs
        return "\n".join(
            f"{run.run_config}\n{run.tags}\n" + "\n".join(map(str, instance.all_logs(run.run_id)))
            for run in runs
        )


def test_a_fresh_container_gets_its_304s_from_the_shared_redis_cache(
    sqlite_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_cache: RedisCache
) -> None:
    monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", redis_cache.url)
    simulator = sqlite_world.simulator
    first = new_container(tmp_path / "first", monkeypatch)
    assert sqlite_world.sync().exit_code == 0
    reports = simulator.requests(REPORT, 200)
    assert reports and simulator.requests(REPORT, 304) == 0

    second = new_container(tmp_path / "second", monkeypatch)
    simulator.reset_counts()
    result = sqlite_world.sync()

    assert result.exit_code == 0, result.output
    assert simulator.requests(REPORT, 304) == reports and simulator.requests(REPORT, 200) == 0
    assert simulator.requests("course_runs", 304) and simulator.requests("course_runs", 200) == 0
    # Nothing on either disk: the ETags and bodies came from Redis.
    assert not (first / "data" / "http_cache").exists()
    assert not (second / "data" / "http_cache").exists()
    stored = redis_cache.stored()
    assert stored
    for blob in stored:
        assert b"Bearer" not in blob and b"uthorization" not in blob and b"eyJ" not in blob
        assert SECRET.encode() not in blob


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_with_redis_down_the_sync_succeeds_uncached_with_one_warning(
    sqlite_world: World,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(cache, "OUTAGES", cache.Outages())
    monkeypatch.setenv(
        "SYNC_ASSETS_HTTP_CACHE_URL", f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    )
    with caplog.at_level(logging.WARNING):
        result = sqlite_world.sync()

    assert result.exit_code == 0, result.output
    simulator = sqlite_world.simulator
    assert simulator.requests(REPORT, 200) and simulator.requests(REPORT, 304) == 0
    warnings = [
        record
        for record in caplog.records
        if record.name.startswith(("sync_assets.partners_api", "hishel"))
    ]
    assert [record.name for record in warnings] == [cache.__name__]
    message = warnings[0].getMessage()
    assert "\n" not in message and "unreachable" in message and "requests go uncached" in message
    for text in (result.output, caplog.text, everything_dagster_recorded()):
        assert PASSWORD not in text
    assert not (Path(os.environ["SYNC_ASSETS_DATA_DIR"]) / "http_cache").exists()
