"""A world to sync: a generated dataset served over loopback HTTP, a platform database, a
Dagster home, and the environment pointing `sync-assets` at them."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from sync_assets.cli import main
from sync_assets.defs.sync.partitions import CourseKeys, course_partitions
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue, seed_users
from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import GeneratedDataset, generate
from sync_assets.simulator.faults import FaultPlan
from sync_assets.simulator.transports import serving
from sync_assets_tests.conftest import migrated

KEY, SECRET = "e2e-partner", "an-end-to-end-secret-of-32-bytes-or-more"
TABLES = (
    "future_learn_memberships",
    "achievements",
    "achievement_transitions",
    "completion_events",
    "user_programme_enrolments",
    "course_sync_state",
)
REPORT = "course_enrolments_report"
MEMBERSHIP = "organisation_membership"


@dataclass
class World:
    dataset: GeneratedDataset
    simulator: PartnersApiSimulator
    engine: Engine

    def sync(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["sync", *args], catch_exceptions=False)

    def partitions(self) -> dict[str, str]:
        """The instance's course partitions: key → course uuid."""
        with dg.DagsterInstance.get() as instance:
            keys = instance.get_dynamic_partitions(course_partitions.name)
        return dict(CourseKeys.resolve(keys, self.dataset.runs["course_uuid"]).uuid_of_key)

    def key(self, course_uuid: str) -> str:
        """The partition key of a course (as the sensor or `sync-assets sync` made it)."""
        return next(key for key, uuid in self.partitions().items() if uuid == course_uuid)

    def partition_status(self, asset: str) -> dict[str, str | None]:
        """Each course partition's status as the UI's partitions view shows it, by course uuid."""
        partitions = self.partitions()
        with dg.DagsterInstance.get() as instance:
            status = instance.get_status_by_partition(
                dg.AssetKey(asset), list(partitions), course_partitions
            )
        return {
            partitions[key]: value.value if value else None for key, value in (status or {}).items()
        }

    def table(self, name: str) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(f"SELECT * FROM {name}")).mappings().all()
        return sorted((dict(row) for row in rows), key=repr)

    def snapshot(self) -> dict[str, list[dict]]:
        return {name: self.table(name) for name in TABLES}

    def achievements(self) -> dict[tuple[str, str], tuple[int, str]]:
        return {
            (row["user_id"], row["activity_id"]): (row["progress"], row["state"])
            for row in self.table("achievements")
        }


@cache
def initialised_dagster_home() -> Path:
    """An empty Dagster home whose storage (SQLite, Dagster's default: runs, event log,
    schedules) is created, once per test process. Each world gets a copy: Dagster creating its
    databases and stamping their migrations took ~0.6 s a test, the copy nothing, and the files
    are the ones it would have written (test_initialised_dagster_home.py compares them)."""
    folder = Path(tempfile.mkdtemp(prefix="sync_assets_dagster_home_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    home = folder / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    return home


def make_world(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: tuple[str, ...] = (),
    dataset: GeneratedDataset | None = None,
) -> Iterator[World]:
    dataset = dataset or generate("tiny", seed=11)
    simulator = PartnersApiSimulator(
        dataset, consumer_key=KEY, consumer_secret=SECRET, faults=FaultPlan.parse(faults, seed=2)
    )
    engine = migrated(create_platform_engine(database_url))
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        seed_users(connection, dataset.users)
    shutil.copytree(initialised_dagster_home(), tmp_path / "dagster_home")
    with serving(simulator) as server:
        for name, value in {
            "FL_PARTNERS_URL": server.base_url,
            "FL_PARTNERS_CONSUMER_KEY": KEY,
            "FL_PARTNERS_CONSUMER_SECRET": SECRET,
            "PLATFORM_DATABASE_URL": database_url,
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "SYNC_ASSETS_DATA_DIR": str(tmp_path / "data"),
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("FL_PARTNERS_IGNORED_COURSE_UUIDS", raising=False)
        # Retries 10 ms apart, not production's half-second unit: the scenarios that fail a
        # request on every attempt (a 500 storm, an unreadable body) would otherwise spend
        # seconds per request asleep. The faults are by request count, not time, so what fails
        # and what is retried is the same; the client's own tests check the backoff itself.
        monkeypatch.setenv("FL_PARTNERS_BACKOFF_SECONDS", "0.01")
        yield World(dataset, simulator, engine)
    engine.dispose()


@pytest.fixture
def world(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(database_url, tmp_path, monkeypatch)
