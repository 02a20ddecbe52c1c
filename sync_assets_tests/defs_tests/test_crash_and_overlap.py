"""Crashes and overlapping syncs, with real processes and real signals (issue: nothing lost,
nothing doubled).

Each scenario runs `sync-assets` as an operator would, in its own process, against a simulator
served over loopback and a platform database on SQLite and PostgreSQL. A crash is a SIGKILL sent
while the process waits at a named failpoint (`sync_assets/failpoints.py`), so whatever it had
open (a transaction, a lock, a Dagster run) is left as a power cut would leave it. Then one plain
`sync-assets sync` (or, for a killed `sync-assets certificates`, one `certificates`), and the
contract tables must equal those of a run that was never interrupted. The runs around the
scenario (that uninterrupted history, a sync before a crash of `certificates`) are the same CLI in
this process (`Platform.run_here`): the crashed, the overlapping and the recovering commands are
processes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from sync_assets.cli import main
from sync_assets.platform.database import create_platform_engine
from sync_assets.platform.demo_catalogue import seed_demo_catalogue, seed_demo_progress, seed_users
from sync_assets.platform.migrate import upgrade
from sync_assets.platform.transactions import course_write_transaction
from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import GeneratedDataset, generate
from sync_assets.simulator.transports import serving
from sync_assets.wording import counted
from sync_assets_tests.conftest import (
    BACKENDS,
    on_backends,
    postgres_admin_url,
    with_search_path,
)

SCRIPT = Path(sys.executable).with_name("sync-assets")
KEY, SECRET = "crash-partner", "a-crash-test-secret-of-32-bytes-or-more"
PROCESS_TIMEOUT = 180
# The test process's own settings of these are not the platform's: never passed on.
UNINHERITED = ("FL_PARTNERS_", "SYNC_ASSETS_FAILPOINT")


@dataclass
class Platform:
    """One platform database and one Dagster home, and `sync-assets` pointed at them."""

    engine: Engine
    url: str
    env: dict[str, str]
    home: Path

    def run(self, *args: str, home: Path | None = None, **env: str) -> Result:
        return start(self, *args, home=home, **env).finish()

    def run_here(self, *args: str, **extra_env: str) -> Result:
        """`sync-assets` in this process (the CLI through click's runner), with the environment a
        process of `run` would get: for runs that are not the crash or its recovery (the
        uninterrupted history, the history before a crash), checked by the tables they leave and
        what they print, not as a process. A process of its own costs seconds of imports."""
        env = self.env | extra_env | {"DAGSTER_HOME": str(self.home)}
        with pytest.MonkeyPatch.context() as patch:
            for name in os.environ.keys() - env.keys():
                if name.startswith(UNINHERITED):
                    patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    def backdate_pending(self) -> None:
        """Seven days pass for every enrolment pending now (C2 becomes due)."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE user_programme_enrolments SET pending_since = :since"
                    " WHERE state = 'pending'"
                ),
                {"since": "2000-01-01 00:00:00"},
            )

    def snapshot(self) -> dict[str, list]:
        return contract_snapshot(self.engine)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Started:
    """A `sync-assets` process, its output read as it comes."""

    def __init__(self, process: subprocess.Popen[str], marker: Path | None) -> None:
        self.process = process
        self.marker = marker
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((process.stdout, self.stdout), (process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        lines.extend(stream)

    def finish(self) -> Result:
        self.process.wait(timeout=PROCESS_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=10)
        return Result(self.process.returncode, "".join(self.stdout), "".join(self.stderr))

    def wait_until(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while not ready():
            if self.process.poll() is not None:
                ended = self.finish()
                pytest.fail(f"ended before {what}:\n{ended.stdout}\n{ended.stderr}")
            assert time.monotonic() < deadline, f"never reached {what}"
            time.sleep(0.05)

    def wait_for_failpoint(self) -> None:
        assert self.marker is not None
        self.wait_until("its failpoint", self.marker.exists)

    def release(self) -> None:
        """Let a process held at its failpoint go on."""
        assert self.marker is not None
        self.marker.unlink()

    def kill_at_failpoint(self) -> Result:
        """Wait until the process stops at its failpoint, then SIGKILL it."""
        self.wait_for_failpoint()
        self.process.send_signal(signal.SIGKILL)
        return self.finish()


def start(
    platform: Platform,
    *args: str,
    failpoint: str | None = None,
    home: Path | None = None,
    **extra_env: str,
) -> Started:
    env = platform.env | extra_env
    env |= {"DAGSTER_HOME": str(home or platform.home), "PYTHONUNBUFFERED": "1"}
    marker = None
    if failpoint:
        marker = platform.home.parent / f"failpoint-{uuid.uuid4().hex}"
        env |= {"SYNC_ASSETS_FAILPOINT": failpoint, "SYNC_ASSETS_FAILPOINT_MARKER": str(marker)}
    process = subprocess.Popen(
        [str(SCRIPT), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its run processes with it: `_stop_started` kills them all
    )
    _STARTED.append(process)
    return Started(process, marker)


_STARTED: list[subprocess.Popen[str]] = []


def contract_snapshot(engine: Engine) -> dict[str, list]:
    """The contract tables, without what differs between two correct runs (ids, clocks, run ids).

    Rows are kept as lists, not sets: a duplicate transition or a second event must show.
    """
    queries = {
        "memberships": "SELECT membership_uuid, user_id, external_learner_id, learner_uuid,"
        " fetched_at IS NOT NULL, linked_at IS NOT NULL, gone_at IS NOT NULL"
        " FROM future_learn_memberships",
        "achievements": "SELECT user_id, activity_id, programme_id, progress, state,"
        " completed_at IS NOT NULL FROM achievements",
        "transitions": "SELECT a.user_id, a.activity_id, t.from_state, t.to_state, t.metadata"
        " FROM achievement_transitions t JOIN achievements a ON a.id = t.achievement_id",
        "completion_events": "SELECT user_id, activity_id, programme_id,"
        " handled_at IS NOT NULL, outcome FROM completion_events",
        "programme_enrolments": "SELECT user_id, programme_id, state, flagged, auto_enrolled,"
        " certificate_number, pending_since IS NOT NULL FROM user_programme_enrolments",
        "notifications": "SELECT user_id, kind FROM notifications",
        "course_sync_state": "SELECT course_uuid, enrolment_count FROM course_sync_state",
    }
    snapshot = {}
    with engine.connect() as connection:
        for name, query in queries.items():
            rows = [
                tuple(_plain(value) for value in row) for row in connection.execute(sa.text(query))
            ]
            snapshot[name] = sorted(rows, key=repr)
    return snapshot


def _plain(value: object) -> object:
    """Transition metadata as one canonical string, without the run id that wrote it."""
    if isinstance(value, str) and value.startswith("{"):
        value = json.loads(value)
    if isinstance(value, dict):
        return json.dumps({k: v for k, v in value.items() if k != "dagster_run_id"}, sort_keys=True)
    return value


def duplicate_transitions(snapshot: dict[str, list]) -> int:
    counts = Counter(row[:4] for row in snapshot["transitions"])
    return sum(count - 1 for count in counts.values())


# One worker runs the whole module (`--dist loadgroup`): the uninterrupted history on each
# database is a module fixture, made once per worker that runs a test of the module.
pytestmark = pytest.mark.xdist_group("crash_and_overlap")


@pytest.fixture(scope="module")
def dataset() -> GeneratedDataset:
    return generate("tiny", seed=11)


@pytest.fixture(scope="module")
def partners_api(dataset: GeneratedDataset) -> Iterator[str]:
    simulator = PartnersApiSimulator(dataset, consumer_key=KEY, consumer_secret=SECRET)
    with serving(simulator) as server:
        yield server.base_url


def _fresh_database_url(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'platform.sqlite3'}"
        return
    admin_url: URL = postgres_admin_url()
    schema = f"crash_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(admin_url, schema).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _platform(
    backend: str, folder: Path, dataset: GeneratedDataset, partners_api: str
) -> Iterator[Platform]:
    folder.mkdir(parents=True)
    for url in _fresh_database_url(backend, folder):
        engine = create_platform_engine(url)
        upgrade(engine)
        with engine.begin() as connection:
            seed_demo_catalogue(connection)
            seed_users(connection, dataset.users)
            seed_demo_progress(connection, dataset.users, share=0.6)
        env = {
            name: value for name, value in os.environ.items() if not name.startswith(UNINHERITED)
        } | {
            "FL_PARTNERS_URL": partners_api,
            "FL_PARTNERS_CONSUMER_KEY": KEY,
            "FL_PARTNERS_CONSUMER_SECRET": SECRET,
            "PLATFORM_DATABASE_URL": url,
            "SYNC_ASSETS_DATA_DIR": str(folder / "data"),
        }
        yield Platform(engine, url, env, folder / "dagster_home")
        engine.dispose()


def _uninterrupted(
    backend: str, folder: Path, dataset: GeneratedDataset, partners_api: str
) -> Iterator[tuple[str, dict[str, list], dict[str, list]]]:
    """An uninterrupted history: a first sync; seven days later, another (which issues C2)."""
    for platform in _platform(backend, folder, dataset, partners_api):
        first = platform.run_here("sync")
        assert first.returncode == 0, first.stderr
        after_first = platform.snapshot()
        platform.backdate_pending()
        second = platform.run_here("sync")
        assert second.returncode == 0, second.stderr
        yield backend, after_first, platform.snapshot()


@pytest.fixture(scope="module")
def baselines(
    tmp_path_factory: pytest.TempPathFactory, dataset: GeneratedDataset, partners_api: str
) -> Iterator[Callable[[str], tuple[str, dict[str, list], dict[str, list]]]]:
    """The uninterrupted history on a backend, made the first time a test of this module asks
    for it and kept for the others, in whatever order xdist hands the tests out."""
    made: dict[str, tuple[str, dict[str, list], dict[str, list]]] = {}
    with ExitStack() as stack:

        def of(backend: str) -> tuple[str, dict[str, list], dict[str, list]]:
            if backend not in made:
                folder = tmp_path_factory.mktemp(f"baseline-{backend}") / "world"
                history = _uninterrupted(backend, folder, dataset, partners_api)
                stack.callback(history.close)
                made[backend] = next(history)
            return made[backend]

        yield of


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def baseline(
    backend: str, baselines: Callable[[str], tuple[str, dict[str, list], dict[str, list]]]
) -> tuple[str, dict[str, list], dict[str, list]]:
    return baselines(backend)


@pytest.fixture
def fresh(
    baseline: tuple[str, dict, dict],
    tmp_path: Path,
    dataset: GeneratedDataset,
    partners_api: str,
) -> Iterator[Platform]:
    """A platform like the baseline's before its first sync, on the same backend. No process a
    test started outlives it, however the test ended: one left held at a failpoint keeps its
    locks and connections (and a core) through every later test."""
    try:
        yield from _platform(baseline[0], tmp_path / "world", dataset, partners_api)
    finally:
        _stop_started()


def _stop_started() -> None:
    """Kill each process `start` began, with the run processes it started (its session)."""
    while _STARTED:
        process = _STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def test_the_baseline_has_certificate_work_to_lose(baseline: tuple[str, dict, dict]) -> None:
    _, after_first, after_second = baseline
    assert after_first["completion_events"] and after_first["notifications"]
    assert all(event[3] for event in after_first["completion_events"])  # every one handled
    pending = [row for row in after_first["programme_enrolments"] if row[2] == "pending"]
    numbered = [row for row in after_second["programme_enrolments"] if row[5] is not None]
    assert pending and len(numbered) == len(pending)
    assert duplicate_transitions(after_first) == 0


# Every phase on SQLite. On PostgreSQL one of each kind of crash: inside an open transaction
# holding a course's lock (before_course_commit), and between two commits of one run, a course
# applied and the run left "started" (after_course_commit). The other phases are the same two
# kinds at other steps (linking and the sweep before certificates are between commits; the
# certificate transaction is also killed on PostgreSQL in the numbering test below).
PHASES = {
    phase: phase
    for phase in (
        "linking.after_lookups",
        "activity_progress.before_course_commit",
        "activity_progress.after_course_commit",
        "sync.before_certificates",
        "certificates.before_commit",
    )
}


@pytest.mark.parametrize(
    "backend, failpoint",
    on_backends(
        PHASES,
        on_postgres={
            "activity_progress.before_course_commit",
            "activity_progress.after_course_commit",
        },
    ),
    indirect=["backend"],
)
def test_a_sync_killed_at_any_phase_then_one_sync_converges(
    fresh: Platform, baseline: tuple[str, dict, dict], failpoint: str
) -> None:
    killed = start(fresh, "sync", failpoint=failpoint).kill_at_failpoint()
    assert killed.returncode == -signal.SIGKILL

    recovery = fresh.run("sync")

    assert recovery.returncode == 0, recovery.stdout + recovery.stderr
    assert "Traceback" not in recovery.stderr
    if failpoint != "sync.before_certificates":  # there, no run was under way
        # The killed process's run is not left "started" for ever, holding its pool slots.
        assert "left running by a killed process" in recovery.stdout
    snapshot = fresh.snapshot()
    assert duplicate_transitions(snapshot) == 0
    assert snapshot == baseline[1]


def test_certificate_numbering_killed_then_certificates_numbers_each_once_and_again_nothing(
    fresh: Platform, baseline: tuple[str, dict, dict]
) -> None:
    """`certificates` killed inside its numbering transaction (C2), then run again: each number
    given once, and the count said; run once more (idempotent), it finds nothing to do. One
    history for both checks (each was a test of its own, seven processes where four do)."""
    assert fresh.run_here("sync").returncode == 0  # the history before the crash
    fresh.backdate_pending()
    killed = start(fresh, "certificates", failpoint="certificates.c2_before_commit")
    assert killed.kill_at_failpoint().returncode == -signal.SIGKILL

    recovery = fresh.run("certificates")

    assert recovery.returncode == 0, recovery.stdout + recovery.stderr
    assert "Traceback" not in recovery.stderr
    snapshot = fresh.snapshot()
    assert snapshot == baseline[2]
    numbers = Counter(
        (row[1], row[5]) for row in snapshot["programme_enrolments"] if row[5] is not None
    )
    assert set(numbers.values()) == {1}
    # The killed transaction numbered nothing: the recovery issued every certificate, and says so.
    issued = baseline[2]["programme_enrolments"]
    count = sum(1 for row in issued if row[5] is not None)
    assert f"{counted(count, 'certificate')} issued" in recovery.stdout

    again = fresh.run("certificates")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 completion events handled" in again.stdout
    assert "0 certificates issued" in again.stdout
    assert fresh.snapshot() == baseline[2]


def assert_both_succeeded_and_converged(
    results: list[Result], platform: Platform, uninterrupted: dict[str, list]
) -> None:
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr
    snapshot = platform.snapshot()
    assert duplicate_transitions(snapshot) == 0
    assert snapshot == uninterrupted


# Both homes on SQLite; on PostgreSQL the different homes, as two machines would run them: then
# only the platform database's course lock keeps the syncs apart (one home's Dagster instance is
# the same on either backend).
HOMES = on_backends(
    {home: home for home in ("same DAGSTER_HOME", "different DAGSTER_HOMEs")},
    on_postgres={"different DAGSTER_HOMEs"},
)


@pytest.mark.parametrize("backend, homes", HOMES, indirect=["backend"])
def test_a_sync_running_into_a_course_another_is_writing_waits_and_applies_nothing_twice(
    fresh: Platform, baseline: tuple[str, dict, dict], homes: str
) -> None:
    other_home = fresh.home if homes == "same DAGSTER_HOME" else fresh.home.with_name("other")
    # The first sync stops with its first course's writes sent, not committed...
    first = start(fresh, "sync", failpoint="activity_progress.before_course_commit")
    first.wait_for_failpoint()
    # ...while the second plans and writes the same course.
    second = start(fresh, "sync", home=other_home)
    second.wait_until(
        "activity_progress", lambda: any("activity_progress: started" in s for s in second.stdout)
    )
    time.sleep(1.0)  # into the course's lock
    first.release()
    results = [first.finish(), second.finish()]

    assert_both_succeeded_and_converged(results, fresh, baseline[1])


@pytest.mark.parametrize("backend, homes", HOMES, indirect=["backend"])
def test_two_syncs_started_together_apply_each_course_once(
    fresh: Platform, baseline: tuple[str, dict, dict], homes: str
) -> None:
    other_home = fresh.home if homes == "same DAGSTER_HOME" else fresh.home.with_name("other")
    first = start(fresh, "sync")
    second = start(fresh, "sync", home=other_home)
    results = [first.finish(), second.finish()]

    assert_both_succeeded_and_converged(results, fresh, baseline[1])


@pytest.mark.postgres  # SQLite's lock is the whole database's: see test_transactions.py
def test_a_course_held_too_long_by_another_writer_is_given_up_in_one_line(
    tmp_path: Path, dataset: GeneratedDataset, partners_api: str
) -> None:
    for platform in _platform("postgresql", tmp_path / "world", dataset, partners_api):
        with platform.engine.connect() as connection:
            known = set(
                connection.execute(
                    sa.text("SELECT future_learn_course_uuid FROM activities")
                ).scalars()
            )
        courses = sorted(known & set(dataset.runs["course_uuid"]))
        held = courses[0]

        with course_write_transaction(platform.engine, held, timeout_seconds=5):
            result = platform.run("sync", SYNC_ASSETS_COURSE_LOCK_TIMEOUT_SECONDS="1")

        assert result.returncode == 1
        assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr
        [error, summary] = result.stderr.strip().splitlines()
        # Named by its partition key: the title's slug, then the start of the uuid.
        key_end = f"-{held.replace('-', '')[:8]}: "
        assert error.startswith("error: activity_progress: 1 course(s) not synced: ")
        # The reason in its own words, right after the key (no exception type before it).
        assert f"{key_end}another sync held course {held} " in error
        assert error.endswith(
            f"another sync held course {held} for more than 1 s; not applied by this run "
            "(the other writer applies it)"
        )
        assert summary == (
            f"Error: 1 of {len(courses)} courses not applied (see above); "
            f"the other {len(courses) - 1} were applied and committed"
        )
        applied = {row[0] for row in platform.snapshot()["course_sync_state"]}
        assert applied == set(courses) - {held}  # the others were applied


# On SQLite: on PostgreSQL the deployment test (deploy_tests/test_multi_process_deployment.py)
# compares a sync in runs of a few courses with one run, table for table.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_sync_in_runs_of_a_few_courses_equals_one_run(
    fresh: Platform, baseline: tuple[str, dict, dict]
) -> None:
    """Runs of bounded size (SYNC_ASSETS_COURSES_PER_RUN) change the memory, not the result."""
    _, after_first, after_second = baseline
    first = fresh.run_here("sync", SYNC_ASSETS_COURSES_PER_RUN="2")
    assert first.returncode == 0, first.stderr
    courses, changed, runs = map(
        int, re.search(r"Checked (\d+) courses: (\d+) to sync, in (\d+) run", first.stdout).groups()
    )
    assert courses > 2 and changed == courses and runs == -(-courses // 2)
    assert fresh.snapshot() == after_first
    fresh.backdate_pending()
    second = fresh.run_here("sync", SYNC_ASSETS_COURSES_PER_RUN="2")
    assert second.returncode == 0, second.stderr
    assert fresh.snapshot() == after_second


@dataclass(frozen=True)
class _SyncRun:
    """One sync run of an overlapping night, as its event log tells it."""

    run_id: str
    pid: str  # the process it names as executing it
    run_start: float  # its process has started executing it
    first_start: float
    step_ends: dict[str, float]  # step key → when it ended
    messages: list[tuple[float, str]]  # the steps' log lines


def _sync_runs(home: Path) -> list[_SyncRun]:
    """The night's sync runs, in order (their chunk tag), as far as they have got."""
    import dagster as dg

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            runs = [
                run
                for run in instance.get_runs()
                if run.job_name == "futurelearn_sync" and "sync_assets/chunk" in run.tags
            ]
            runs.sort(key=lambda run: int(run.tags["sync_assets/chunk"].split(" of ")[0]))
            found = []
            for run in runs:
                records = instance.get_records_for_run(run.run_id, limit=10_000).records
                entries = [record.event_log_entry for record in records]
                events = [(e.timestamp, e.dagster_event) for e in entries if e.dagster_event]
                starts = [t for t, e in events if e.event_type == dg.DagsterEventType.STEP_START]
                run_starts = [t for t, e in events if e.event_type == dg.DagsterEventType.RUN_START]
                found.append(
                    _SyncRun(
                        run.run_id,
                        run.tags.get("sync_assets/pid", ""),
                        min(run_starts, default=float("inf")),
                        min(starts, default=float("inf")),
                        {
                            e.step_key: t
                            for t, e in events
                            if e.event_type == dg.DagsterEventType.STEP_SUCCESS and e.step_key
                        },
                        [(e.timestamp, e.user_message) for e in entries if not e.dagster_event],
                    )
                )
    return found


def _marked_pid(marker: Path) -> int | None:
    try:
        return int(marker.read_text().split()[1])
    except (FileNotFoundError, IndexError):  # released, or being written
        return None


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_runs_of_one_sync_overlap_the_next_reading_while_the_one_before_links(
    fresh: Platform, baseline: tuple[str, dict, dict]
) -> None:
    """A sync of several runs executes each in a process of its own, the next starting once the
    one before has read its reports. Run 1 held in its linking (its look-ups made, nothing
    written): run 2 starts and reads its reports, but looks up nothing until run 1 has stored
    its look-ups (run 1 matches on meanwhile). One run at a time looks up memberships, so none
    new to both is asked for twice (R2). Two runs execute at once: run 3's process starts once
    run 2 has read its reports, and its first step waits until run 1 has ended. The tables are
    those of one run."""
    from sync_assets.defs.sync.night import HANDOFF_STEP

    sync = start(fresh, "sync", failpoint="linking.after_lookups", SYNC_ASSETS_COURSES_PER_RUN="2")
    assert sync.marker is not None
    sync.wait_for_failpoint()
    first_linker = _marked_pid(sync.marker)

    def second_run_has(step: str) -> bool:
        runs = _sync_runs(fresh.home)
        return len(runs) >= 2 and step in runs[1].step_ends

    sync.wait_until(
        "the second run's reports read while the first links",
        lambda: second_run_has("enrolments"),
    )
    time.sleep(1.0)  # time enough for its look-ups, had it not waited
    assert _marked_pid(sync.marker) == first_linker
    assert not second_run_has("linked_memberships")
    sync.wait_until(
        "the third run's process started while the first still executes",
        lambda: len(runs := _sync_runs(fresh.home)) >= 3 and runs[2].run_start < float("inf"),
    )
    sync.release()
    sync.wait_until(
        "the second run at its look-ups",
        lambda: _marked_pid(sync.marker) not in (None, first_linker),
    )
    second_linker = _marked_pid(sync.marker)
    while sync.process.poll() is None:
        if sync.marker.exists():
            sync.release()
        time.sleep(0.05)
    result = sync.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert sync.process.pid not in (first_linker, second_linker)
    runs = _sync_runs(fresh.home)
    assert len(runs) >= 2
    for before, after in itertools.pairwise(runs):
        assert after.first_start >= before.step_ends[HANDOFF_STEP]
    # Each run names the process executing it: a later command reaps a run by that process.
    assert [int(run.pid) for run in runs[:2]] == [first_linker, second_linker]
    first, second = runs[:2]
    assert second.step_ends["enrolments"] < first.step_ends["linked_memberships"]
    waited = [(t, line) for t, line in second.messages if "linked after run" in line]
    assert len(waited) == 1 and first.run_id in waited[0][1]
    stored = [t for t, line in first.messages if line.startswith("look-ups stored")]
    assert len(stored) == 1 and waited[0][0] >= stored[0]
    slot = [(t, line) for t, line in runs[2].messages if "left its slot" in line]
    assert len(slot) == 1 and first.run_id in slot[0][1]
    assert slot[0][0] >= max(first.step_ends.values())  # run 3 read nothing before run 1 ended
    assert fresh.snapshot() == baseline[1]
