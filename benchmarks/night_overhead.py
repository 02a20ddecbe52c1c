"""The fixed cost of a night: CPU seconds of small `sync-assets sync` nights in one process.

    .venv/bin/python benchmarks/night_overhead.py --nights 6 [--json out.json]

A tiny night (dataset `tiny`, a handful of courses) is almost all orchestration: creating the
check, sync and certificate runs, Dagster's event log, the IO manager, the partition checks.
Every night pays it, and the test suite pays it a few hundred times. This runs `--nights`
nights in this process as `sync-assets sync` runs them (the first sync, then a next day after
each of the simulator's `advance_day`), against the simulator in a process of its own over
loopback HTTP (so its CPU is not counted), on a SQLite platform and a Dagster home in a temp
dir (the embedded default instance, SQLite storage).

For each night: wall seconds, this process's CPU seconds (every thread); the events stored in
the event log, the SQL statements executed and the database connections opened (counts: they
do not vary with the machine's load, as CPU seconds on a shared machine do); and, from a sampler
thread reading the main thread's stack every few milliseconds, the share of samples spent in
Dagster's event log storage (storing and reading events), in creating runs, and in our IO
manager. Self-contained on purpose (no import of the rest of `benchmarks/`): copy it anywhere
and run it with another checkout's venv to compare commits back to back, e.g.

    cp benchmarks/night_overhead.py /tmp/
    (cd ../main && .venv/bin/python /tmp/night_overhead.py); .venv/bin/python /tmp/night_overhead.py

Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

# Where a sample's stack is, by a frame's file (the first category that matches, innermost
# frame outwards, wins; `other` otherwise).
CATEGORIES = {
    "event_log_storage": ("dagster/_core/storage/event_log/",),
    "run_storage": ("dagster/_core/storage/runs/",),
    "io_manager": ("sync_assets/defs/storage.py",),
}
# Outer frames: a sample under one of these functions counts for it as well.
CALLERS = {
    "create_run": ("create_run_of_code_location_job",),
    "prepare_partitions": ("prepare_partitions",),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sampler:
    """Samples one thread's stack at a fixed interval; counts samples by category."""

    def __init__(self, thread_id: int, interval: float) -> None:
        self.thread_id, self.interval = thread_id, interval
        self.counts: dict[str, int] = {}
        self.functions: Counter[str] = Counter()  # samples under each function (inclusive)
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            self.total += 1
            seen: set[str] = set()
            first: str | None = None
            functions: set[str] = set()
            while frame is not None:
                code = frame.f_code
                filename = code.co_filename.replace(os.sep, "/")
                functions.add(f"{code.co_qualname} ({'/'.join(filename.split('/')[-2:])})")
                if first is None:
                    for name, parts in CATEGORIES.items():
                        if any(part in filename for part in parts):
                            first = name
                            break
                for name, callers in CALLERS.items():
                    if code.co_name in callers:
                        seen.add(name)
                frame = frame.f_back
            for name in seen | {first or "other"}:
                self.counts[name] = self.counts.get(name, 0) + 1
            self.functions.update(functions)

    def shares(self) -> dict[str, float]:
        names = [*CATEGORIES, *CALLERS]
        return {name: round(self.counts.get(name, 0) / max(self.total, 1), 3) for name in names}


class Statements:
    """SQL statements executed and database connections opened by every engine in this process
    (Dagster's storages' and the platform's), from SQLAlchemy's events: counts, not timings, so
    they compare commits whatever else the machine is doing."""

    def __init__(self) -> None:
        self.statements = self.connections = 0
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._statement)
        sa.event.listen(sa.pool.Pool, "connect", self._connection)

    def _statement(self, *_: object) -> None:
        self.statements += 1

    def _connection(self, *_: object) -> None:
        self.connections += 1

    def counts(self) -> tuple[int, int]:
        return self.statements, self.connections


def events_stored(dagster_home: Path) -> int:
    """Events in the SQLite event log's run shards (one file per run; the index shard aside)."""
    total = 0
    for path in (dagster_home / "history" / "runs").glob("*.db"):
        if path.name != "index.db":
            connection = sqlite3.connect(path)
            try:
                total += connection.execute("SELECT count(*) FROM event_logs").fetchone()[0]
            finally:
                connection.close()
    return total


def start_simulator(dataset: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_PARTNERS_")}
    process = subprocess.Popen(
        [
            *(str(Path(sys.executable).parent / "sync-assets"), "simulator", "serve"),
            *("--dataset", dataset, "--port", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_simulator/counts", timeout=5)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the simulator did not start")


def seed_platform(url: str, dataset: str) -> None:
    from sync_assets.platform.database import create_platform_engine
    from sync_assets.platform.demo_catalogue import (
        seed_activities,
        seed_demo_catalogue,
        seed_users,
    )
    from sync_assets.platform.migrate import upgrade
    from sync_assets.simulator.datasets import generate

    data = generate(dataset)  # the simulator's default seed: the same users
    engine = create_platform_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        seed_demo_catalogue(connection)
        seed_activities(connection, data.activities())
        seed_users(connection, data.users)
    engine.dispose()


def run_nights(
    nights: int, dataset: str, interval: float, keep: Path | None = None, profile: int = 0
) -> list[dict[str, Any]]:
    from sync_assets.simulator.app import SIMULATOR_CONSUMER_KEY, SIMULATOR_CONSUMER_SECRET

    port = free_port()
    simulator = start_simulator(dataset, port)
    results = []
    functions: Counter[str] = Counter()
    sampled = 0
    try:
        with tempfile.TemporaryDirectory(prefix="night-overhead-") as temp:
            work = keep or Path(temp)
            (work / "dagster_home").mkdir(parents=True)
            url = f"sqlite:///{work / 'platform.sqlite3'}"
            for name in list(os.environ):
                if name.startswith(("FL_PARTNERS_", "SYNC_ASSETS_")):
                    del os.environ[name]
            os.environ.update(
                {
                    "FL_PARTNERS_URL": f"http://127.0.0.1:{port}",
                    "FL_PARTNERS_CONSUMER_KEY": SIMULATOR_CONSUMER_KEY,
                    "FL_PARTNERS_CONSUMER_SECRET": SIMULATOR_CONSUMER_SECRET,
                    "PLATFORM_DATABASE_URL": url,
                    "DAGSTER_HOME": str(work / "dagster_home"),
                    "SYNC_ASSETS_DATA_DIR": str(work / "data"),
                }
            )
            seed_platform(url, dataset)
            # Imported after the environment is set: the definitions read it when built.
            from click.testing import CliRunner

            from sync_assets.cli import main

            statements = Statements()
            for night in range(nights):
                if night:
                    httpx.post(f"http://127.0.0.1:{port}/_simulator/advance_day", timeout=300)
                events = events_stored(work / "dagster_home")
                counted = statements.counts()
                wall, cpu = time.perf_counter(), time.process_time()
                with Sampler(threading.get_ident(), interval) as sampler:
                    result = CliRunner().invoke(main, ["sync"], catch_exceptions=False)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                now = statements.counts()
                sql, connections = now[0] - counted[0], now[1] - counted[1]
                if result.exit_code != 0:
                    raise RuntimeError(f"night {night + 1} failed:\n{result.output}")
                results.append(
                    {
                        "night": night + 1,
                        "kind": "first sync" if night == 0 else "next day",
                        "wall_seconds": round(wall, 3),
                        "cpu_seconds": round(cpu, 3),
                        "events_stored": events_stored(work / "dagster_home") - events,
                        "sql_statements": sql,
                        "connections_opened": connections,
                        "samples": sampler.total,
                        "shares": sampler.shares(),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
                if night or nights == 1:
                    functions.update(sampler.functions)
                    sampled += sampler.total
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)
    if profile:
        print(f"Functions by share of the main thread's samples (nights 2 on, {sampled} samples):")
        for function, count in functions.most_common(profile):
            print(f"{count / max(sampled, 1):6.3f}  {function}")
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The first sync, and the median of the next days (night 2 onwards)."""
    later = results[1:] or results
    shares = {
        name: round(statistics.median(r["shares"][name] for r in later), 3)
        for name in later[0]["shares"]
    }
    return {
        "first_sync_cpu_seconds": results[0]["cpu_seconds"],
        "first_sync_wall_seconds": results[0]["wall_seconds"],
        "next_day_cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in later), 3),
        "next_day_wall_seconds_median": round(
            statistics.median(r["wall_seconds"] for r in later), 3
        ),
        "next_day_shares_median": shares,
        "events_stored": [r["events_stored"] for r in results],
        "sql_statements": [r["sql_statements"] for r in results],
        "connections_opened": [r["connections_opened"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=6)
    parser.add_argument("--dataset", default="tiny")
    parser.add_argument("--interval", type=float, default=0.005, help="sampling, seconds")
    parser.add_argument("--json", type=Path, help="write the nights and the summary here")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument(
        "--profile", type=int, default=0, help="print the N functions most sampled (nights 2 on)"
    )
    args = parser.parse_args()
    results = run_nights(args.nights, args.dataset, args.interval, args.keep, args.profile)
    figures = summary(results)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"nights": results, "summary": figures}, indent=2))


if __name__ == "__main__":
    main()
