"""The deployment on one machine: every piece a process of its own, sharing no local file.

A PostgreSQL-backed Dagster instance (deploy/dagster.yaml: queued coordinator, default run
launcher, compute logs on S3), a code server and `dagster-daemon` started from working
directory A, asset storage on an S3 API (moto's server over loopback), the HTTP cache in Redis,
the Partners API simulator over loopback. `sync-assets sync --submit` from A queues the nightly
sync in chunks of SYNC_ASSETS_COURSES_PER_RUN courses; the daemon launches each chunk as a run
process of the code server. The platform tables must equal the single-process result. Then, from
working directory B (its own Dagster home and data folder, nothing on its disk), a rerun of one
course's `activity_progress` loads its inputs from the shared storage.

The daemon starts once the CLI has queued its runs, as on a deployment that has synced before:
the course partitions sensor, evaluated by the daemon through the code server, then finds every
course with a partition and launches nothing. (Started first, the sensor adds the partitions and
launches a first sync of its own, which the CLI's runs queue behind: minutes of the same work.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import redis
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.utils import make_new_backfill_id
from sqlalchemy.engine import URL

from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue, seed_demo_progress, seed_users
from sync_assets.platform.migrate import upgrade
from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import generate
from sync_assets.simulator.transports import serving
from sync_assets_tests.conftest import postgres_admin_url, with_search_path
from sync_assets_tests.defs_tests.test_crash_and_overlap import contract_snapshot
from sync_assets_tests.processes import free_port, start, stop
from sync_assets_tests.s3_server import create_bucket, object_keys, s3_environment

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY, SECRET = "deployment-partner", "a-deployment-secret-of-32-bytes-or-more!"
COURSES_PER_RUN = 3
REDIS_URL = "redis://127.0.0.1:6379/9"  # a database of its own: its keys are deleted after
REDIS_PREFIX = b"sync_assets:partners_api:v2"
STARTUP_SECONDS = 90
SYNC_SECONDS = 600

pytestmark = pytest.mark.postgres

# `dagster-daemon`, its backfill loop 2 s apart instead of 30. The loop sleeps a fixed interval
# between iterations (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS, read at each
# loop's start; no setting), and a backfill of the course assets takes four iterations (course_runs,
# then the chunks, then their completion): two of the test's three minutes asleep. Same code, the
# iterations sooner; the other daemons keep their own intervals.
DAEMON_WITH_SHORT_BACKFILL_LOOP = (
    "import dagster._daemon.controller as controller\n"
    "controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2\n"
    "from dagster._daemon.cli import main\n"
    "import sys\n"
    "sys.argv[0] = 'dagster-daemon'\n"
    "main()\n"
)


def _platform_schema(admin_url: URL, name: str) -> str:
    admin = sa.create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    admin.dispose()
    return with_search_path(admin_url, name).render_as_string(hide_password=False)


def _seeded(url: str, dataset) -> None:
    engine = create_platform_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        seed_users(connection, dataset.users)
        seed_demo_progress(connection, dataset.users, share=0.6)
    engine.dispose()


@dataclass
class Deployment:
    env_a: dict[str, str]
    env_b: dict[str, str]
    dir_a: Path
    dir_b: Path
    platform_url: str
    single_process_url: str
    single_process_env: dict[str, str]
    bucket: str
    endpoint: str
    start_daemon: Callable[[], None]

    def command(self, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=SYNC_SECONDS,
        )

    def start(self, env: dict[str, str], cwd: Path, log: Path, *args: str) -> subprocess.Popen:
        return start([str(BIN / args[0]), *args[1:]], env, cwd, log)


def _wait_for_code_server(port: int, server: subprocess.Popen, log: Path) -> None:
    """Until the code server answers gRPC's health check (what `dagster api grpc-health-check`
    asks, here in process: a `dagster` process per poll took seconds to start)."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the code server exited: {log.read_text()[-3000:]}")
        if client.health_check_query() == "SERVING":
            return
        time.sleep(0.25)
    pytest.fail(f"the code server did not answer in {STARTUP_SECONDS} s: {log.read_text()[-3000:]}")


@pytest.fixture
def deployment(
    tmp_path: Path, s3_endpoint: str, postgres_database_url: URL
) -> Iterator[Deployment]:
    cache = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        cache.ping()
    except redis.RedisError as error:
        pytest.fail(f"the deployment test needs Redis at {REDIS_URL}: {error}")
    for key in cache.scan_iter(REDIS_PREFIX + b"*"):
        cache.delete(key)

    dataset = generate("tiny", seed=11)
    simulator = PartnersApiSimulator(dataset, consumer_key=KEY, consumer_secret=SECRET)
    admin_url = postgres_admin_url()
    suffix = os.urandom(4).hex()
    platform_url = _platform_schema(admin_url, f"deploy_{suffix}")
    single_process_url = _platform_schema(admin_url, f"single_{suffix}")
    for url in (platform_url, single_process_url):
        _seeded(url, dataset)
    bucket = create_bucket(s3_endpoint)

    dir_a, dir_b = tmp_path / "machine-a", tmp_path / "machine-b"
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FL_PARTNERS_", "SYNC_ASSETS_", "DAGSTER_", "AWS_"))
        and name != "PLATFORM_DATABASE_URL"
    }
    instance_db = postgres_database_url
    with serving(simulator) as server:
        settings = {
            "FL_PARTNERS_URL": server.base_url,
            "FL_PARTNERS_CONSUMER_KEY": KEY,
            "FL_PARTNERS_CONSUMER_SECRET": SECRET,
        }
        deployed = (
            base
            | settings
            | s3_environment(s3_endpoint)
            | {
                "SYNC_ASSETS_PROFILE": "deployment",
                "PLATFORM_DATABASE_URL": platform_url,
                "SYNC_ASSETS_STORAGE_URL": f"s3://{bucket}/assets",
                "SYNC_ASSETS_HTTP_CACHE_URL": REDIS_URL,
                "SYNC_ASSETS_PSEUDONYM_KEY": "a-deployment-pseudonym-key-of-32-characters",
                "SYNC_ASSETS_COURSES_PER_RUN": str(COURSES_PER_RUN),
                "DAGSTER_PG_HOST": instance_db.host or "127.0.0.1",
                "DAGSTER_PG_PORT": str(instance_db.port or 5432),
                "DAGSTER_PG_DB": instance_db.database or "",
                "DAGSTER_PG_USERNAME": instance_db.username or "postgres",
                "DAGSTER_PG_PASSWORD": instance_db.password or "",
                "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
                "DAGSTER_COMPUTE_LOGS_PREFIX": "compute-logs",
                "PYTHONUNBUFFERED": "1",
            }
        )
        envs = {}
        for directory in (dir_a, dir_b):
            (directory / "home").mkdir(parents=True)
            shutil.copy(PROJECT / "deploy" / "dagster.yaml", directory / "home" / "dagster.yaml")
            envs[directory] = deployed | {
                "DAGSTER_HOME": str(directory / "home"),
                "SYNC_ASSETS_DATA_DIR": str(directory / "data"),
            }
        port = free_port()
        (dir_a / "workspace.yaml").write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {port}\n      location_name: sync_assets\n"
        )
        code_log, daemon_log = dir_a / "code-server.log", dir_a / "daemon.log"
        code_server = start(
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                "sync_assets.definitions",
                "--location-name",
                "sync_assets",
            ],
            envs[dir_a],
            dir_a,
            code_log,
        )
        daemons: list[subprocess.Popen] = []

        def start_daemon() -> None:
            daemons.append(
                start(
                    [
                        sys.executable,
                        "-c",
                        DAEMON_WITH_SHORT_BACKFILL_LOOP,
                        "run",
                        "-w",
                        str(dir_a / "workspace.yaml"),
                    ],
                    envs[dir_a],
                    dir_a,
                    daemon_log,
                )
            )

        try:
            _wait_for_code_server(port, code_server, code_log)
            single_home = tmp_path / "single-process"
            single_env = (
                base
                | settings
                | {
                    "PLATFORM_DATABASE_URL": single_process_url,
                    "DAGSTER_HOME": str(single_home / "home"),
                    "SYNC_ASSETS_DATA_DIR": str(single_home / "data"),
                }
            )
            yield Deployment(
                env_a=envs[dir_a],
                env_b=envs[dir_b],
                dir_a=dir_a,
                dir_b=dir_b,
                platform_url=platform_url,
                single_process_url=single_process_url,
                single_process_env=single_env,
                bucket=bucket,
                endpoint=s3_endpoint,
                start_daemon=start_daemon,
            )
        finally:
            # Together: each takes seconds to wind down.
            stop(*daemons, code_server)
            for key in cache.scan_iter(REDIS_PREFIX + b"*"):
                cache.delete(key)
            admin = sa.create_engine(admin_url)
            with admin.begin() as connection:
                for url in (platform_url, single_process_url):
                    schema = sa.engine.make_url(url).query["options"].split("=")[1]
                    connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def _snapshot(url: str) -> dict[str, list]:
    engine = create_platform_engine(url)
    try:
        return contract_snapshot(engine)
    finally:
        engine.dispose()


@contextmanager
def _instance(env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    """The shared instance, as seen from one machine (its home, the same PostgreSQL)."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "AWS_"))})
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _backfill_every_course(instance: dg.DagsterInstance, courses: list[str]) -> str:
    """What the UI's "Materialize all" over every course partition submits."""
    from sync_assets.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        backfill_timestamp=time.time(),
        tags={},
        asset_selection=list(asset_graph.materializable_asset_keys),
        partition_names=courses,
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def _wait_for_line(process: subprocess.Popen, log: Path, line: str) -> None:
    """Until `process` has written `line` to its log (it goes on running)."""
    deadline = time.monotonic() + SYNC_SECONDS
    while line not in log.read_text():
        assert process.poll() is None, f"exited {process.returncode}: {log.read_text()[-6000:]}"
        assert time.monotonic() < deadline, f"no {line!r} in {SYNC_SECONDS} s"
        time.sleep(0.25)


def _first_ticks(instance: dg.DagsterInstance, sensor: str) -> list:
    """The sensor's ticks, once it has one that has ended (the daemon evaluates it at start, in
    its own time; its minimum interval is an hour: one tick)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        state = next((state for state in states if state.instigator_name == sensor), None)
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id) if state else []
        ended = ticks and all(tick.status != TickStatus.STARTED for tick in ticks)
        if ended or time.monotonic() > deadline:
            return list(ticks)
        time.sleep(0.5)


def test_the_deployment_syncs_in_chunks_and_reruns_a_course_from_another_machine(
    deployment: Deployment,
) -> None:
    d = deployment
    # The nightly sync, queued from A for the daemon: runs of at most COURSES_PER_RUN courses.
    # The CLI adds the course partitions, then queues; the daemon starts once it has queued.
    log = d.dir_a / "sync-submit.log"
    submitted = d.start(d.env_a, d.dir_a, log, "sync-assets", "sync", "--submit")
    try:
        _wait_for_line(submitted, log, "Queued ")
        d.start_daemon()
        exit_code = submitted.wait(timeout=SYNC_SECONDS)
    finally:
        stop(submitted)  # if it is still running: a test that failed waiting
    assert exit_code == 0, log.read_text()[-6000:]
    after_chunks = _snapshot(d.platform_url)

    with _instance(d.env_a) as instance:
        # Every sync run is one of the CLI's: the sensor found each course with its partition.
        sync_runs = instance.get_runs(dg.RunsFilter(job_name="futurelearn_sync"))
        courses = instance.get_dynamic_partitions("course")
        assert len(sync_runs) == -(-len(courses) // COURSES_PER_RUN) > 1
        for run in sync_runs:
            assert run.status == dg.DagsterRunStatus.SUCCESS
            assert run.tags["sync_assets/launched_by"] == "cli --submit"
            # Launched by the daemon through the code server: a process of its own, not A's.
            assert ".dagster/grpc_info" in run.tags
        # The CLI's certificate run, unless the daemon's sensor had handled every event of the
        # night by the time the CLI asked (then it makes none); the outcome is the platform's
        # tables, compared with the single-process sync below.
        certificate_runs = instance.get_runs(dg.RunsFilter(job_name="daily_certificates_job"))
        assert [run.status for run in certificate_runs] in ([], [dg.DagsterRunStatus.SUCCESS])
        # The sensor ran in the deployment (the code server's settings, the shared instance and
        # cache) and skipped: nothing to add.
        [tick] = _first_ticks(instance, "course_partitions_sensor")
        assert tick.status == TickStatus.SKIPPED, tick
        assert f"all {len(courses)} known courses have partitions" in (tick.skip_reason or "")

    # A backfill of every course partition (what "Materialize all" in the UI launches): the
    # daemon splits it into runs of COURSES_PER_RUN, by the assets' backfill policy.
    with _instance(d.env_a) as instance:
        backfill_id = _backfill_every_course(instance, courses)

    # Meanwhile (the daemon's backfill iterations are seconds apart), the same sync in one process.
    single = d.command(d.single_process_env, d.dir_a, "sync-assets", "sync")
    assert single.returncode == 0, single.stderr[-3000:]
    # The same platform tables as the sync in one process: chunks change memory, not results.
    assert after_chunks == _snapshot(d.single_process_url)

    deadline = time.monotonic() + SYNC_SECONDS
    with _instance(d.env_a) as instance:
        while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
            assert time.monotonic() < deadline, "the backfill did not finish"
            time.sleep(0.5)
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        backfill_runs = instance.get_runs(
            dg.RunsFilter(tags={"dagster/backfill": backfill_id}, job_name=None)
        )
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in backfill_runs)
        # course_runs (one value for all courses) runs on its own; the course assets in chunks.
        chunks = [
            run
            for run in backfill_runs
            if {"dagster/asset_partition_range_start", "dagster/partition"} & set(run.tags)
        ]
        assert len(chunks) == len(sync_runs)
    # Nothing had changed upstream: the backfill wrote nothing.
    assert _snapshot(d.platform_url) == _snapshot(d.single_process_url)

    # Values on S3, one object per course and asset; compute logs there too.
    keys = object_keys(d.endpoint, d.bucket)
    stored = [key for key in keys if key.startswith("assets/activity_progress/")]
    markers = [key for key in stored if key.startswith("assets/activity_progress/_unchanged/")]
    assert len(stored) - len(markers) == len(courses)
    # The backfill found every course unchanged: a marker beside each course's last value.
    assert len(markers) == len(courses)
    assert any(key.startswith("compute-logs/") for key in keys)
    # Nothing on either machine's disk but the Dagster home: no storage, no HTTP cache.
    for directory in (d.dir_a, d.dir_b):
        assert not (directory / "data").exists()
    cached = redis.Redis.from_url(REDIS_URL).scan_iter(REDIS_PREFIX + b"*")
    assert next(cached, None) is not None

    # From B: rerun one course's activity_progress alone; its inputs come from the shared storage.
    course = courses[len(courses) // 2]
    rerun = d.command(
        d.env_b,
        d.dir_b,
        "dagster",
        "asset",
        "materialize",
        "--select",
        "activity_progress",
        "--partition",
        course,
        "-m",
        "sync_assets.definitions",
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    with _instance(d.env_b) as instance:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("activity_progress"), asset_partitions=[course]
            ),
            limit=1,
        ).records[0]
        assert record.run_id not in {run.run_id for run in sync_runs}
        metadata = record.asset_materialization.metadata
        # Its input, on the shared storage, is the backfill's marker: skipped as unchanged.
        assert metadata["status"].value == "unchanged"
    assert not (d.dir_b / "data").exists()
    # Nothing had changed: the rerun wrote nothing, and the tables still match.
    assert _snapshot(d.platform_url) == _snapshot(d.single_process_url)
