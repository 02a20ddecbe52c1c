"""Benchmark harness: the sync against the simulator over loopback HTTP, as the schedule runs it.

    python -m benchmarks.harness --workload teachcomputing --latency-ms 20 --concurrency 16

For a workload it starts `sync-assets simulator serve` in its own process (with latency per
request), builds a fresh platform database (SQLite or PostgreSQL) seeded with the workload's
catalogue and users, and runs `sync-assets sync` (the night's check run, then one Dagster run
over the courses that changed: the path the nightly schedule takes) as a child process, for
three scenarios: a first sync, a second sync on unchanged data, and a next-day sync after the
simulator moves a day on. Optionally the seed's algorithm (benchmarks/seed_algorithm.py) runs
against the same simulator and a fresh database. Results are ratios first: ours / seed, ours /
the API bound (requests × latency / concurrency). Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import sqlalchemy as sa
import yaml

from sync_assets.defs.sync.changes import COURSES_NOT_RUN
from sync_assets.platform.database import create_platform_engine, parse_database_url
from sync_assets.platform.demo_catalogue import (
    seed_activities,
    seed_demo_catalogue,
    seed_users,
)
from sync_assets.platform.migrate import upgrade
from sync_assets.platform.tables import user_email_keys
from sync_assets.platform.tables import users as users_table
from sync_assets.rules.linking import email_keys
from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET
from sync_assets.simulator.datasets import GeneratedDataset, generate
from sync_assets.simulator.streamed import StreamedDataset
from sync_assets.sync import fact_names

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TABLES = (
    "future_learn_memberships",
    "achievements",
    "achievement_transitions",
    "completion_events",
    "user_programme_enrolments",
    "notifications",
    "course_sync_state",
)


@dataclass
class Scenario:
    name: str
    wall_seconds: float
    peak_rss_mb: float
    requests: int
    requests_in_run: int
    minimum_requests: int
    conditional_304: int
    membership_requests: int
    by_endpoint_and_status: dict[str, int]
    rows_written: int
    sql_statements: int
    api_seconds: float
    rules_seconds: float
    write_seconds: float
    steps_seconds: float
    orchestration_seconds: float
    api_bound_seconds: float
    exit_code: int
    dagster_runs: dict[str, int] = field(default_factory=dict)  # job name: runs this scenario
    courses_skipped_unchanged: int = 0  # course partitions the sync skipped as unchanged

    @property
    def bound_multiple(self) -> float:
        return (
            self.wall_seconds / self.api_bound_seconds if self.api_bound_seconds else float("nan")
        )


@dataclass
class Benchmark:
    workload: str
    database: str
    latency_ms: float
    concurrency: int
    enrolments: int
    known_runs: int
    machine: dict[str, Any]
    commit: str
    date: str
    scenarios: list[Scenario] = field(default_factory=list)
    seed: dict[str, Any] | None = None
    # After the last scenario: `sync --recompute-unchanged` on the same data. It must find
    # nothing left to do (courses skipped as unchanged equal a full recomputation), and its wall
    # time is what the same night costs without skipping.
    full_recompute: dict[str, Any] | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SimulatorProcess:
    def __init__(self, workload: str, latency_ms: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FL_PARTNERS_")}
        self.process = subprocess.Popen(
            [
                str(BIN / "sync-assets"),
                "simulator",
                "serve",
                "--dataset",
                workload,
                "--latency-ms",
                str(latency_ms),
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/_simulator/counts", timeout=5)
                return
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError("the simulator did not start")

    def counts(self) -> dict[tuple[str, Any], int]:
        answer = httpx.get(f"{self.url}/_simulator/counts", timeout=30).json()
        return {(r["endpoint"], r["status"]): r["count"] for r in answer["requests"]}

    def reset(self) -> None:
        httpx.post(f"{self.url}/_simulator/reset_counts", timeout=30)

    def advance_day(self) -> dict[str, int]:
        return httpx.post(f"{self.url}/_simulator/advance_day", timeout=300).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def fresh_database(database: str, workdir: Path) -> str:
    if database == "sqlite":
        return f"sqlite:///{workdir / 'platform.sqlite3'}"
    admin = parse_database_url(database)
    name = f"sync_assets_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def dagster_instance(home: Path, database: str) -> dict[str, str]:
    """The Dagster instance the sync records itself in, as deployed next to that database.

    SQLite: the embedded default (no dagster.yaml). PostgreSQL: the production instance
    (deploy/dagster.yaml) in a fresh database of the same server, less its compute logs on
    object storage (they stay in files under the home: the benchmark measures the sync, not log
    shipping, and needs no S3). Returns the environment it needs; the harness process reads the
    instance too, so it sets them here.
    """
    home.mkdir(parents=True, exist_ok=True)
    if database == "sqlite":
        return {}
    url = sa.make_url(fresh_database(database, home))
    instance = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    del instance["compute_logs"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
    env = {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_DB": url.database or "",
        "DAGSTER_PG_USERNAME": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
    }
    os.environ.update(env)
    return env


def seed_platform(url: str, dataset: GeneratedDataset) -> None:
    """The catalogue, the dataset's activities and users; a streamed dataset's a block at a time."""
    engine = create_platform_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        seed_activities(connection, dataset.activities())
        if not isinstance(dataset, StreamedDataset):
            seed_users(connection, dataset.users)
    if isinstance(dataset, StreamedDataset):
        # The users' caseless email keys too, a block at a time, as a platform synced before
        # has them: the sync's first refresh would otherwise read every user at once.
        # Plain INSERTs of row tuples (a fresh database): 9.2M users through seed_users' upserts
        # of dicts would take ~12 minutes here.
        for block in dataset.user_blocks():
            keys = block.select("id", "email", pl.col("email").map_batches(email_keys).alias("k"))
            with engine.begin() as connection:
                connection.execute(sa.insert(users_table), block.to_dicts())
                connection.execute(
                    sa.insert(user_email_keys),
                    keys.rename({"id": "user_id", "k": "email_key"}).to_dicts(),
                )
    engine.dispose()


def table_digest(url: str) -> str:
    """Every row of the platform tables the sync writes, as one digest (rows in key order)."""
    engine = create_platform_engine(url)
    digest = hashlib.sha256()
    with engine.connect() as connection:
        for table in TABLES:
            rows = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1")).all()
            digest.update(f"{table}:{len(rows)}:".encode())
            for row in rows:
                # psycopg2 reads a bytea as a memoryview, whose repr is its address: its bytes.
                values = tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                digest.update(repr(values).encode())
    engine.dispose()
    return digest.hexdigest()


def table_rows(url: str) -> int:
    engine = create_platform_engine(url)
    with engine.connect() as connection:
        total = sum(
            connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES
        )
    engine.dispose()
    return total


def known_memberships(dataset: GeneratedDataset) -> set[str]:
    known = set(dataset.courses.filter("known")["course_uuid"])
    runs = dataset.runs.filter(pl.col("course_uuid").is_in(list(known)))["run_uuid"]
    return set(
        dataset.enrolments.filter(pl.col("run_uuid").is_in(runs.implode()))["membership_uuid"]
    )


NIGHT_JOBS = ("futurelearn_check", "futurelearn_sync")


def run_metadata(dagster_home: Path, earlier_runs: set[str]) -> dict[str, float]:
    """The time split and write counts of the night's runs (the check and the sync runs of the
    changed courses: every run of those jobs not in `earlier_runs`), from their event logs."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    figures = {
        "api_seconds": 0.0,
        "plan_seconds": 0.0,
        "write_seconds": 0.0,
        "sql_statements": 0,
        "rules_step": 0.0,
        "peak_rss_mib": 0.0,
        "skipped_unchanged": 0,
        "steps_seconds": 0.0,
    }
    steps: list[tuple[float, float]] = []
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            if run.job_name in NIGHT_JOBS and run.run_id not in earlier_runs:
                _add_run_figures(instance, run.run_id, figures, steps)
    # Overlapping runs' steps run at once: what counts is the wall some step covered.
    figures["steps_seconds"] = covered_seconds(steps)
    return figures


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """The time covered by at least one of the (start, end) intervals."""
    covered, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


def _add_run_figures(
    instance: Any, run_id: str, figures: dict[str, float], steps: list[tuple[float, float]]
) -> None:
    starts: dict[str, float] = {}
    api_steps: dict[str, float] = {}
    skipped_in_run = 0
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            started = starts.get(event.step_key, record.timestamp)
            duration = record.timestamp - started
            steps.append((started, record.timestamp))
            if event.step_key == "latest_enrolments":
                figures["rules_step"] += duration
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            metadata = {k: v.value for k, v in materialization.metadata.items()}
            name = materialization.asset_key.to_user_string()
            if fact_names.API_SECONDS in metadata:
                api_steps[name] = metadata[fact_names.API_SECONDS]  # once per step
            if fact_names.RUN_PEAK_RSS in metadata:
                figures["peak_rss_mib"] = max(
                    figures["peak_rss_mib"], metadata[fact_names.RUN_PEAK_RSS]
                )
            if name == "course_runs":  # the night's check: the courses no run was made for
                figures["skipped_unchanged"] += sum(
                    course[fact_names.STATUS] == fact_names.STATUS_UNCHANGED
                    for course in metadata.get(COURSES_NOT_RUN, [])
                )
            if name == "enrolments" and fact_names.SKIPPED_UNCHANGED in metadata:
                # The step's own figure, repeated on each of its partitions: once per run.
                skipped_in_run = metadata[fact_names.SKIPPED_UNCHANGED]
            if name == "activity_progress":
                figures["plan_seconds"] += metadata.get(fact_names.PLAN_SECONDS, 0.0)
                figures["write_seconds"] += metadata.get(fact_names.WRITE_SECONDS, 0.0)
                figures["sql_statements"] += metadata.get(fact_names.SQL_STATEMENTS, 0)
    figures["api_seconds"] += sum(api_steps.values())
    figures["skipped_unchanged"] += skipped_in_run


def run_ids(dagster_home: Path) -> set[str]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        return {run.run_id for run in instance.get_runs()}


def runs_by_job(dagster_home: Path) -> dict[str, int]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        names = [run.job_name for run in instance.get_runs()]
    return {name: names.count(name) for name in sorted(set(names))}


def run_sync(env: dict[str, str], workdir: Path, *options: str) -> tuple[float, float, int]:
    rss_file = workdir / "rss.txt"
    started = time.perf_counter()
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(rss_file),
            str(BIN / "sync-assets"),
            "sync",
            *options,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return wall, int(rss_file.read_text().split()[-1]) / 1024, done.returncode


def measure(
    name: str,
    simulator: SimulatorProcess,
    env: dict[str, str],
    workdir: Path,
    url: str,
    minimum: int,
    latency_ms: float,
    concurrency: int,
) -> Scenario:
    rows_before = table_rows(url)
    runs_before = runs_by_job(Path(env["DAGSTER_HOME"]))
    earlier_runs = run_ids(Path(env["DAGSTER_HOME"]))
    simulator.reset()
    wall, rss, code = run_sync(env, workdir)
    runs_after = runs_by_job(Path(env["DAGSTER_HOME"]))
    counts = simulator.counts()
    meta = run_metadata(Path(env["DAGSTER_HOME"]), earlier_runs)
    requests = sum(counts.values())
    # `sync-assets sync` looks the runs list up once to add partitions before the run starts.
    in_run = requests - 1
    return Scenario(
        name=name,
        wall_seconds=round(wall, 2),
        # `sync-assets` starts each run's peak count afresh, so the command's own peak (from
        # time(1)) is its last run's; the sync run's steps report theirs.
        peak_rss_mb=round(max(rss, meta["peak_rss_mib"]), 1),
        requests=requests,
        requests_in_run=in_run,
        minimum_requests=minimum,
        conditional_304=sum(c for (_, status), c in counts.items() if status == 304),
        membership_requests=sum(
            c for (e, _), c in counts.items() if e == "organisation_membership"
        ),
        by_endpoint_and_status={f"{e} {s}": c for (e, s), c in sorted(counts.items(), key=str)},
        rows_written=table_rows(url) - rows_before,
        sql_statements=meta["sql_statements"],
        api_seconds=round(meta["api_seconds"], 2),
        rules_seconds=round(meta["rules_step"] + meta["plan_seconds"], 2),
        write_seconds=round(meta["write_seconds"], 2),
        steps_seconds=round(meta["steps_seconds"], 2),
        orchestration_seconds=round(wall - meta["steps_seconds"], 2),
        api_bound_seconds=round(in_run * latency_ms / 1000 / concurrency, 2),
        exit_code=code,
        dagster_runs={
            job: count - runs_before.get(job, 0)
            for job, count in runs_after.items()
            if count > runs_before.get(job, 0)
        },
        courses_skipped_unchanged=int(meta["skipped_unchanged"]),
    )


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync_env(
    simulator: SimulatorProcess,
    url: str,
    workdir: Path,
    concurrency: int,
    database: str = "sqlite",
) -> dict[str, str]:
    """The environment of a `sync-assets sync` against the simulator, with its own platform
    database, Dagster home and data folder under `workdir`. Settings of ours inherited from the
    caller's shell (FL_PARTNERS_*, SYNC_ASSETS_*) are dropped: a benchmark says what it runs."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FL_PARTNERS_", "SYNC_"))},
        "FL_PARTNERS_URL": simulator.url,
        "FL_PARTNERS_CONSUMER_KEY": SIMULATOR_CONSUMER_KEY,
        "FL_PARTNERS_CONSUMER_SECRET": SIMULATOR_CONSUMER_SECRET,
        "FL_PARTNERS_CONCURRENCY": str(concurrency),
        "PLATFORM_DATABASE_URL": url,
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        **dagster_instance(workdir / "dagster_home", database),
        "SYNC_ASSETS_DATA_DIR": str(workdir / "data"),
    }


def run_benchmark(
    workload: str,
    *,
    latency_ms: float = 20.0,
    concurrency: int = 16,
    database: str = "sqlite",
    with_seed: bool = False,
    scenarios: tuple[str, ...] = ("first", "second", "next_day"),
    check_full_recompute: bool = True,
    progress: Callable[[Benchmark], None] | None = None,
) -> Benchmark:
    dataset = generate(workload)
    simulator = SimulatorProcess(workload, latency_ms)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{workload}-"))
    try:
        url = fresh_database(database, workdir)
        seed_platform(url, dataset)
        env = sync_env(simulator, url, workdir, concurrency, database)
        result = Benchmark(
            workload=workload,
            database="sqlite" if database == "sqlite" else "postgresql",
            latency_ms=latency_ms,
            concurrency=concurrency,
            enrolments=dataset.enrolments.height,
            known_runs=dataset.known_run_count(),
            machine={
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "system": platform.platform(),
            },
            commit=git_commit(),
            date=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        fetched: set[str] = set()
        for scenario in scenarios:
            if scenario == "next_day":
                simulator.advance_day()
                dataset.advance_day()  # the same day, deterministically, for the minimum
            wanted = known_memberships(dataset)
            minimum = 1 + dataset.known_run_count() + len(wanted - fetched)
            result.scenarios.append(
                measure(scenario, simulator, env, workdir, url, minimum, latency_ms, concurrency)
            )
            fetched |= wanted
            if progress:  # a long workload keeps what it measured if stopped later
                progress(result)
        if check_full_recompute:
            result.full_recompute = full_recompute(simulator, env, workdir, url)
            if progress:
                progress(result)
        if with_seed:
            result.seed = run_seed(
                workload, dataset, simulator, database, workdir, concurrency, latency_ms
            )
        return result
    finally:
        simulator.stop()


def full_recompute(
    simulator: SimulatorProcess, env: dict[str, str], workdir: Path, url: str
) -> dict[str, Any]:
    """The same night again, every course recomputed: the check that skipping changed nothing."""
    before = table_digest(url)
    rows_before = table_rows(url)
    simulator.reset()
    wall, rss, code = run_sync(env, workdir, "--recompute-unchanged")
    counts = simulator.counts()
    identical = table_digest(url) == before
    if not identical:
        print("full recomputation changed the platform tables: skipping is wrong", file=sys.stderr)
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mb": round(rss, 1),
        "requests": sum(counts.values()),
        "rows_written": table_rows(url) - rows_before,
        "tables_identical": identical,
        "exit_code": code,
    }


def run_seed(
    workload: str,
    dataset: GeneratedDataset,
    simulator: SimulatorProcess,
    database: str,
    workdir: Path,
    concurrency: int,
    latency_ms: float,
) -> dict[str, Any]:
    from benchmarks.seed_algorithm import SeedIntegration

    seed_dir = workdir / "seed"
    seed_dir.mkdir()
    url = fresh_database(database, seed_dir)
    seed_platform(url, dataset)
    integration = SeedIntegration(
        simulator.url, SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET, url, concurrency
    )
    runs: dict[str, Any] = {"data": "the same as ours after the next day"}
    for name in ("first", "second"):
        simulator.reset()
        before = integration.statements
        seconds = integration.sync()["seconds"]
        counts = simulator.counts()
        requests = sum(counts.values())
        runs[name] = {
            "wall_seconds": round(seconds, 2),
            "requests": requests,
            "membership_requests": sum(
                c for (e, _), c in counts.items() if e == "organisation_membership"
            ),
            "sql_statements": integration.statements - before,
            "api_bound_seconds": round(requests * latency_ms / 1000 / concurrency, 2),
        }
    return runs


COLUMNS = (
    ("scenario", "name"),
    ("wall s", "wall_seconds"),
    ("API bound s", "api_bound_seconds"),
    ("wall / bound", "bound_multiple"),
    ("requests in run", "requests_in_run"),
    ("minimum", "minimum_requests"),
    ("304s", "conditional_304"),
    ("membership calls", "membership_requests"),
    ("rows written", "rows_written"),
    ("SQL statements", "sql_statements"),
    ("API s", "api_seconds"),
    ("rules s", "rules_seconds"),
    ("writes s", "write_seconds"),
    ("orchestration s", "orchestration_seconds"),
    ("peak RSS MB", "peak_rss_mb"),
)


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(results: list[Benchmark]) -> str:
    header = ["workload", "db", *(title for title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bench in results:
        for scenario in bench.scenarios:
            cells = [bench.workload, bench.database]
            cells += [_cell(getattr(scenario, attribute)) for _, attribute in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workload", choices=["tiny", "demo", "teachcomputing", "large"], default="demo"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a PostgreSQL server URL")
    parser.add_argument(
        "--seed-algorithm", action="store_true", help="also run the seed's algorithm"
    )
    parser.add_argument(
        "--scenarios",
        default="first,second,next_day",
        help="comma-separated, in order: first, second, next_day (a quick look: first)",
    )
    parser.add_argument(
        "--no-full-recompute",
        action="store_true",
        help="skip the closing check that a full recomputation finds nothing left to do",
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    def write_json(bench: Benchmark) -> None:
        if args.json:
            args.json.write_text(json.dumps(asdict(bench), indent=2))

    bench = run_benchmark(
        args.workload,
        latency_ms=args.latency_ms,
        concurrency=args.concurrency,
        database=args.database,
        with_seed=args.seed_algorithm,
        scenarios=tuple(name.strip() for name in args.scenarios.split(",") if name.strip()),
        check_full_recompute=not args.no_full_recompute,
        progress=write_json,
    )
    print(to_markdown([bench]))
    if bench.full_recompute:
        print("full recomputation after the last scenario:", json.dumps(bench.full_recompute))
    if bench.seed:
        print("seed algorithm:", json.dumps(bench.seed))
    write_json(bench)


if __name__ == "__main__":
    main()
