"""The same next day, replayed from one saved state by several checkouts in alternating rounds.

    .venv/bin/python -m benchmarks.next_day_replay prepare --workload teachcomputing --state S
    .venv/bin/python -m benchmarks.next_day_replay replay --state S \\
        --checkout /work/main --checkout . --rounds 2 [--json out.json] [--py-spy PY_SPY]
    .venv/bin/python -m benchmarks.next_day_replay replay --state S \
        --checkout . --checkout ".?SYNC_ASSETS_COURSES_PER_RUN=980" --rounds 2

`prepare` runs the first sync (this checkout's code) against the simulator over loopback HTTP
(20 ms latency, 16 in flight, as the harness) on a fresh SQLite platform and Dagster home, and
keeps the whole state (platform database, Dagster home, data folder with the HTTP cache).
`replay` copies that state back to the same place each time (stored outputs and cache entries
name their paths and the simulator's URL), starts the simulator on the same port, moves it a day
on and runs `sync-assets sync` of each checkout in turn, alternating the order each round: every
checkout syncs the same changed day from the same state, each with its own instance settings
(its `dagster.yaml`; on PostgreSQL its `deploy/dagster.yaml`). Per night it prints the wall seconds
and counts that do not move with the machine's load: Dagster runs by job, events stored, SQL
statements of the sync's writes, requests. The ratios against the first checkout are what to
compare; absolute seconds on a shared machine are not.

With `--py-spy`, each night is recorded (py-spy record --subprocesses, speedscope JSON) beside
the results. Nothing here asserts timings.

With `--quiet` the night is the first sync's day again: every report unchanged (a quiet night).

A checkout named `PATH?NAME=VALUE&...` runs with those settings of ours (the harness's
environment drops any inherited from the shell): one checkout against itself with other settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import yaml

from benchmarks.harness import (
    ROOT,
    SimulatorProcess,
    free_port,
    run_ids,
    run_metadata,
    runs_by_job,
    seed_platform,
    sync_env,
)
from sync_assets.simulator.datasets import generate

LATENCY_MS = 20.0
CONCURRENCY = 16


@dataclass(frozen=True)
class Checkout:
    """A checkout to replay the night with, and settings of ours to set for it."""

    path: Path
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Checkout:
        path, _, query = spec.partition("?")
        pairs = [pair.partition("=") for pair in query.split("&") if pair]
        return cls(Path(path), {name: value for name, _, value in pairs})

    def __str__(self) -> str:
        query = "&".join(f"{name}={value}" for name, value in self.settings.items())
        return f"{self.path}?{query}" if query else str(self.path)

    def label(self) -> str:
        return self.path.resolve().name + "".join(
            f"-{name}-{value}" for name, value in self.settings.items()
        )


class _PortSimulator(SimulatorProcess):
    """The harness's simulator process, on a chosen port: the cache's keys name the URL."""

    def __init__(self, workload: str, latency_ms: float, port: int) -> None:
        import benchmarks.harness as harness

        chosen = harness.free_port
        harness.free_port = lambda: port
        try:
            super().__init__(workload, latency_ms)
        finally:
            harness.free_port = chosen


def _pg_databases(server: str | None, suffix: str) -> dict[str, str]:
    """The platform's and the Dagster instance's database names on `server` for `suffix`."""
    return (
        {}
        if server is None
        else {"platform": f"nd_platform_{suffix}", "dagster": f"nd_dagster_{suffix}"}
    )


def _pg_copy(server: str, source: str | None, target: str) -> None:
    """Create `target` afresh on `server`, empty or as a copy of `source` (a template)."""
    admin = sa.make_url(server).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)'))
        template = f' TEMPLATE "{source}"' if source else ""
        connection.execute(sa.text(f'CREATE DATABASE "{target}"{template}'))
    engine.dispose()


def _env(
    workdir: Path, port: int, server: str | None = None, suffix: str = "work"
) -> dict[str, str]:
    pg = _pg_databases(server, suffix)
    url = sa.make_url(server) if server else None
    platform = (
        url.set(drivername="postgresql+psycopg2", database=pg["platform"]).render_as_string(
            hide_password=False
        )
        if url is not None
        else f"sqlite:///{workdir / 'platform.sqlite3'}"
    )
    dagster = (
        {
            "DAGSTER_PG_HOST": url.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_DB": pg["dagster"],
            "DAGSTER_PG_USERNAME": url.username or "postgres",
            "DAGSTER_PG_PASSWORD": url.password or "",
        }
        if url is not None
        else {}
    )
    simulator = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    # The harness's environment of a night (SQLite: no instance to create), this state's
    # platform database and, on PostgreSQL, this state's Dagster database.
    env = sync_env(simulator, platform, workdir, CONCURRENCY)  # type: ignore[arg-type]
    return {**env, "PLATFORM_DATABASE_URL": platform, **dagster}


def _events_of_runs(dagster_home: Path, new_runs: set[str]) -> int:
    total = 0
    for run_id in new_runs:
        path = dagster_home / "history" / "runs" / f"{run_id}.db"
        if path.exists():
            with closing(sqlite3.connect(path)) as shard:
                total += shard.execute("SELECT count(*) FROM event_logs").fetchone()[0]
    return total


def _pg_events(env: dict[str, str], new_runs: set[str]) -> int:
    url = sa.URL.create(
        "postgresql+psycopg2",
        username=env["DAGSTER_PG_USERNAME"],
        password=env["DAGSTER_PG_PASSWORD"] or None,
        host=env["DAGSTER_PG_HOST"],
        port=int(env["DAGSTER_PG_PORT"]),
        database=env["DAGSTER_PG_DB"],
    )
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE run_id = ANY(:runs)"),
            {"runs": list(new_runs)},
        ).scalar_one()
    engine.dispose()
    return count


def _pg_commits(server: str) -> dict[str, int]:
    """Transactions committed in each work database since it was created (this night's), as
    PostgreSQL's statistics count them: a count that does not move with the machine's load."""
    time.sleep(2)  # the statistics are flushed within a second of a backend going idle
    admin = sa.make_url(server).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(admin)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY(:names)"
            ),
            {"names": list(_pg_databases(server, "work").values())},
        ).all()
    engine.dispose()
    return {name: commits for name, commits in rows}


def _production_instance(checkout: Path, home: Path) -> None:
    """The checkout's production instance in `home`, less its compute logs on S3 (as the
    harness runs it): each checkout's night uses its own instance settings."""
    instance = yaml.safe_load((checkout / "deploy" / "dagster.yaml").read_text())
    del instance["compute_logs"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))


def prepare(
    workload: str, state: Path, server: str | None, settings: dict[str, str] | None = None
) -> None:
    if state.exists():
        shutil.rmtree(state)
    workdir = state / "work"
    (workdir / "dagster_home").mkdir(parents=True)
    port = free_port()
    env = _env(workdir, port, server, "saved") | (settings or {})
    if server:
        for name in _pg_databases(server, "saved").values():
            _pg_copy(server, None, name)
        _production_instance(ROOT, workdir / "dagster_home")
    simulator = _PortSimulator(workload, LATENCY_MS, port)
    try:
        seed_platform(env["PLATFORM_DATABASE_URL"], generate(workload))
        started = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "sync-assets"), "sync"],
            env=env,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        print(f"first sync: {time.perf_counter() - started:.1f} s")
    finally:
        simulator.stop()
    (state / "state.json").write_text(
        json.dumps({"workload": workload, "port": port, "server": server})
    )
    shutil.copytree(workdir, state / "saved")


def night(
    checkout: Checkout,
    state: Path,
    settings: dict[str, Any],
    py_spy: str | None,
    label: str,
    quiet: bool = False,
) -> dict[str, Any]:
    workdir = state / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(state / "saved", workdir)
    server = settings.get("server")
    if server:
        saved, work = _pg_databases(server, "saved"), _pg_databases(server, "work")
        for which in ("platform", "dagster"):
            _pg_copy(server, saved[which], work[which])
    env = _env(workdir, settings["port"], server) | checkout.settings
    home = workdir / "dagster_home"
    if server:
        _production_instance(checkout.path, home)
    else:  # the embedded default's instance, as the checkout ships it
        shutil.copy(checkout.path / "dagster.yaml", home / "dagster.yaml")
    simulator = _PortSimulator(settings["workload"], LATENCY_MS, settings["port"])
    try:
        if not quiet:  # the day after; quiet: the same day again, every report unchanged
            simulator.advance_day()
        simulator.reset()
        os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_PG_")})
        before = runs_by_job(home)
        earlier = run_ids(home)
        command = [str(checkout.path / ".venv" / "bin" / "sync-assets"), "sync"]
        if py_spy:
            out = state / f"{label}.speedscope.json"
            command = [py_spy, "record", "--subprocesses", "-r", "100", "-f", "speedscope",
                       "-o", str(out), "--", *command]  # fmt: skip
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
        counts = simulator.counts()
    finally:
        simulator.stop()
    commits = _pg_commits(server) if server else {}
    after = runs_by_job(home)
    new = run_ids(home) - earlier
    meta = run_metadata(home, earlier)
    return {
        "checkout": str(checkout),
        "wall_seconds": round(wall, 2),
        # The command's own CPU (user + system, with py-spy's when recording): steadier than
        # wall on a shared machine, though not immune to it.
        "cpu_seconds": round(cpu, 2),
        "exit_code": done.returncode,
        "runs": {job: n - before.get(job, 0) for job, n in after.items() if n > before.get(job, 0)},
        "events": _events_of_runs(home, new) if not server else _pg_events(env, new),
        "sql_statements": meta["sql_statements"],
        "api_seconds": round(meta["api_seconds"], 2),
        "steps_seconds": round(meta["steps_seconds"], 2),
        "requests": sum(counts.values()),
        "pg_commits": commits,
        "output_tail": done.stdout.splitlines()[-12:],
    }


def replay(
    state: Path,
    checkouts: list[Checkout],
    rounds: int,
    py_spy: str | None,
    out: Path | None,
    quiet: bool = False,
) -> None:
    settings = json.loads((state / "state.json").read_text())
    nights: list[dict[str, Any]] = []
    for number in range(rounds):
        order = checkouts if number % 2 == 0 else list(reversed(checkouts))
        for checkout in order:
            label = f"round{number}-{checkout.label()}"
            result = night(checkout, state, settings, py_spy, label, quiet) | {"round": number}
            nights.append(result)
            print(
                f"round {number} {checkout}: {result['wall_seconds']} s "
                f"(CPU {result['cpu_seconds']} s), runs {result['runs']}, "
                f"{result['events']} events, {result['sql_statements']} statements, "
                f"{result['requests']} requests, exit {result['exit_code']}"
                + (f", PostgreSQL commits {result['pg_commits']}" if result["pg_commits"] else ""),
                flush=True,
            )
            if out:
                out.write_text(json.dumps(nights, indent=2))
    base = checkouts[0]
    for checkout in checkouts[1:]:
        for figure in ("wall_seconds", "cpu_seconds"):
            ratios = [
                mine[figure] / theirs[figure]
                for number in range(rounds)
                for mine in nights
                if mine["round"] == number and mine["checkout"] == str(checkout)
                for theirs in nights
                if theirs["round"] == number and theirs["checkout"] == str(base)
            ]
            print(
                f"{checkout} / {base}: {figure} ratios {[round(r, 2) for r in ratios]}, "
                f"median {statistics.median(ratios):.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["prepare", "replay"])
    parser.add_argument("--workload", default="teachcomputing")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--checkout", type=Checkout.parse, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--py-spy", help="path of py-spy: record each night")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true", help="replay a quiet night (no new day)")
    parser.add_argument("--database", help="prepare on this PostgreSQL server (default: SQLite)")
    args = parser.parse_args()
    if args.action == "prepare":
        # Its settings from a checkout named `.?NAME=VALUE`; the code is always this checkout's.
        settings = args.checkout[0].settings if args.checkout else None
        prepare(args.workload, args.state, args.database, settings)
    else:
        checkouts = args.checkout or [Checkout(Path("."))]
        replay(args.state, checkouts, args.rounds, args.py_spy, args.json, args.quiet)


if __name__ == "__main__":
    main()
