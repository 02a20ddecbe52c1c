"""Creating, executing, queueing and following runs of the code location's jobs.

Runs are created from the code location as Dagster's own launchers create them (job snapshot,
execution plan, remote origin), so a run started by `sync-assets` shows under its job in the UI
with its code origin, and can be re-executed from there. It then either executes in this process
or is queued through the instance's run coordinator for the daemon's run launcher (`--submit`),
as the schedule's runs are. The private Dagster APIs this takes are in `dagster_internals`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from sync_assets.runs.dagster_internals import (
    InProcessCodeLocation,
    code_location_in_this_process,
    create_run_of_code_location_job,
    execute_run_in_this_process,
    start_run_in_child_process,
    submit_run_to_coordinator,
)
from sync_assets.runs.instance import PID_TAG, cli_run_tags, submitted_run_tags
from sync_assets.runs.turns import PREVIOUS_RUN_TAG, SLOT_AFTER_RUN_TAG, step_ended
from sync_assets.settings import ConfigurationError, project_dir

# What workspace.yaml, the Dockerfile and [tool.dg] call the code location: runs carry it, and
# the UI lists a run under its job only when the names match.
LOCATION_NAME = "sync_assets"
DEFINITIONS_MODULE = "sync_assets.definitions"

# The command prints its own progress and one line per failure from the event log; Dagster's
# console logger would add each failure again with its stack trace. The UI keeps everything.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}
STEP_EVENTS = {
    dg.DagsterEventType.STEP_START: "started",
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "FAILED",
}
SUBMITTED_POLL_SECONDS = 1.0
OVERLAP_POLL_SECONDS = 0.2
# Runs executing at once in `execute_overlapping`: as many as the machine's two cores keep busy.
OVERLAPPING_RUNS = 2
INTERRUPTED_WAIT_SECONDS = 30.0
QUEUED_NOTICE_SECONDS = 30.0


@dataclass
class FinishedRun:
    """A run that ended, with its events as the instance's event log holds them."""

    run_id: str
    job_name: str
    success: bool
    events: list[dg.DagsterEvent]


class CodeLocationRuns:
    """Runs of the `sync_assets` code location's jobs on one instance."""

    def __init__(self, instance: dg.DagsterInstance, location: InProcessCodeLocation) -> None:
        self.instance = instance
        self._location = location

    def create(
        self,
        job_name: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
        asset_selection: Sequence[dg.AssetKey] | None = None,
    ) -> dg.DagsterRun:
        """A run of `job_name` (of `asset_selection` only, if given) recorded in the instance,
        not yet started."""
        return create_run_of_code_location_job(
            self._location, self.instance, job_name, run_config, tags, asset_selection
        )

    def execute(
        self,
        job_name: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
        say: Callable[[str], None],
        asset_selection: Sequence[dg.AssetKey] | None = None,
    ) -> FinishedRun:
        """Create a run and execute it in this process, printing its steps as they go."""
        run = self.create(
            job_name,
            {**run_config, **QUIET_LOGGERS},
            {**tags, **cli_run_tags()},
            asset_selection,
        )
        done = threading.Event()
        follower = threading.Thread(
            target=_follow_steps, args=(self.instance, [run.run_id], done, say), daemon=True
        )
        follower.start()
        _reset_peak_memory()
        try:
            execute_run_in_this_process(self.instance, run)
        finally:
            done.set()
            follower.join(timeout=5)
        return self.finished(run.run_id)

    def execute_overlapping(
        self,
        job_name: str,
        run_config: Mapping[str, Any],
        tags: Sequence[Mapping[str, str]],
        say: Callable[[str], None],
        asset_selection: Sequence[dg.AssetKey] | None,
        *,
        handoff_step: str,
    ) -> list[FinishedRun]:
        """Create a run per tags and execute them in processes of their own, in order, at most
        OVERLAPPING_RUNS at a time: each starts once the run before it has ended `handoff_step`,
        so that one run's later steps overlap the next one's first. A step that one run at a
        time may execute waits for the run before it, and a run past the slots waits in its
        first step for the run whose slot it takes (runs/turns.py: each run after the first
        names them), so its process starts while the runs before it execute.

        A process of its own per run, not a thread: a run's writes would hold this process's
        interpreter while the next run's requests wait on it, and each run's peak memory stays
        its own. A run whose process died before ending it is marked failed, as run monitoring
        would mark it.
        """

        def create(run_tags: Mapping[str, str]) -> dg.DagsterRun:
            return self.create(
                job_name,
                {**run_config, **QUIET_LOGGERS},
                {**run_tags, **cli_run_tags()},
                asset_selection,
            )

        def start(run: dg.DagsterRun) -> subprocess.Popen:
            child = start_run_in_child_process(self.instance, run)
            # The process executing the run is the child: a later command reaps the run when the
            # child is dead (instance.reap_dead_cli_runs), not while it outlives this one.
            self.instance.add_run_tags(run.run_id, {PID_TAG: str(child.pid)})
            return child

        # The first run starts as soon as it exists; the others are created while it executes,
        # each naming the run before it (for the steps that wait for their turn: runs/turns.py).
        created = [create(tags[0])]
        children = [start(created[0])]
        done = threading.Event()
        follower: threading.Thread | None = None
        try:
            for run_tags in tags[1:]:
                slot = (
                    {SLOT_AFTER_RUN_TAG: created[-OVERLAPPING_RUNS].run_id}
                    if len(created) >= OVERLAPPING_RUNS
                    else {}
                )
                created.append(create({**run_tags, PREVIOUS_RUN_TAG: created[-1].run_id, **slot}))
            run_ids = [run.run_id for run in created]
            follower = threading.Thread(
                target=_follow_steps, args=(self.instance, run_ids, done, say), daemon=True
            )
            follower.start()
            for run in created[1:]:
                self._wait_for_handoff(children[-1], run_ids[len(children) - 1], handoff_step)
                children.append(start(run))
            for child in children:
                child.wait()
        finally:
            _interrupt_running(children)
            done.set()
            if follower is not None:
                follower.join(timeout=5)
            self._end_left_runs(created, len(children))
        return [self.finished(run.run_id) for run in created]

    def _wait_for_handoff(
        self, last: subprocess.Popen, last_run_id: str, handoff_step: str
    ) -> None:
        """Until the last run started has handed off, or its process has ended."""
        while last.poll() is None and not step_ended(self.instance, last_run_id, handoff_step):
            time.sleep(OVERLAP_POLL_SECONDS)

    def _end_left_runs(self, created: list[dg.DagsterRun], started: int) -> None:
        """What a stopped command or a dead process left: a run started and not ended is marked
        failed (as run monitoring would), a run never started canceled."""
        for index, run in enumerate(created):
            stored = self.instance.get_run_by_id(run.run_id)
            if stored is None or stored.status in FINISHED:
                continue
            if index < started:
                self.instance.report_run_failed(
                    stored, "The run's process exited before the run ended."
                )
            else:
                self.instance.report_run_canceled(
                    stored, "Not started: the command stopped before the run's turn came."
                )

    def submit(
        self,
        job_name: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
        asset_selection: Sequence[dg.AssetKey] | None = None,
    ) -> str:
        """Create a run and queue it for the daemon, as the schedule's runs are queued."""
        if not isinstance(self.instance.run_coordinator, dg.QueuedRunCoordinator):
            raise ConfigurationError(
                "--submit",
                "the Dagster instance does not queue runs: set run_coordinator to "
                "QueuedRunCoordinator in $DAGSTER_HOME/dagster.yaml and run dagster-daemon",
            )
        run = self.create(job_name, run_config, {**tags, **submitted_run_tags()}, asset_selection)
        submit_run_to_coordinator(self._location, self.instance, run.run_id)
        return run.run_id

    def wait(self, run_ids: list[str], say: Callable[[str], None]) -> list[FinishedRun]:
        """Follow queued runs until every one has ended; their steps are printed as they go."""
        done = threading.Event()
        follower = threading.Thread(
            target=_follow_steps, args=(self.instance, run_ids, done, say), daemon=True
        )
        follower.start()
        started = time.monotonic()
        noticed = started
        try:
            while True:
                runs = {
                    run.run_id: run
                    for run in self.instance.get_runs(dg.RunsFilter(run_ids=run_ids))
                }
                if all(run.status in FINISHED for run in runs.values()):
                    break
                queued = [run for run in runs.values() if run.status == dg.DagsterRunStatus.QUEUED]
                if queued and time.monotonic() - noticed >= QUEUED_NOTICE_SECONDS:
                    noticed = time.monotonic()
                    say(
                        f"  {len(queued)} run(s) still queued after "
                        f"{noticed - started:.0f} s: is dagster-daemon running on this instance?"
                    )
                time.sleep(SUBMITTED_POLL_SECONDS)
        finally:
            done.set()
            follower.join(timeout=5)
        return [self.finished(run_id) for run_id in run_ids]

    def finished(self, run_id: str) -> FinishedRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        events = [
            entry.dagster_event
            for entry in self.instance.all_logs(run_id)
            if entry.dagster_event is not None
        ]
        return FinishedRun(
            run_id=run_id,
            job_name=run.job_name,
            success=run.status == dg.DagsterRunStatus.SUCCESS,
            events=events,
        )


def _interrupt_running(children: list[subprocess.Popen]) -> None:
    """Interrupt the runs still executing (the command was stopped): each ends its run as
    Dagster ends an interrupted one; one that does not in INTERRUPTED_WAIT_SECONDS is killed."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.send_signal(signal.SIGINT)
    for child in running:
        try:
            child.wait(timeout=INTERRUPTED_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _reset_peak_memory() -> None:
    """Start this process's peak-memory count afresh (Linux), so each run executed here reports
    its own peak (`run_peak_rss_mib`), as a run in a process of its own would."""
    # Not Linux, or not allowed: the peak stays the process's since it started.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextmanager
def code_location_runs(instance: dg.DagsterInstance) -> Iterator[CodeLocationRuns]:
    """The code location loaded in this process, under the name the deployment gives it."""
    with code_location_in_this_process(
        instance, DEFINITIONS_MODULE, str(project_dir()), LOCATION_NAME
    ) as location:
        yield CodeLocationRuns(instance, location)


def _follow_steps(
    instance: dg.DagsterInstance,
    run_ids: list[str],
    done: threading.Event,
    say: Callable[[str], None],
) -> None:
    """Print each step as it starts and ends, from the runs' event logs.

    Reads only step events past a cursor: this thread shares the GIL with an in-process run, and
    re-reading the whole log twice a second once cost the run's request fan-out a fifth of its pace.
    """
    started = time.monotonic()
    cursors: dict[str, str | None] = dict.fromkeys(run_ids)
    several = len(run_ids) > 1
    while True:
        finished = done.is_set()
        for run_id in run_ids:
            page = instance.get_records_for_run(
                run_id, cursor=cursors[run_id], of_type=set(STEP_EVENTS)
            )
            cursors[run_id] = page.cursor
            for record in page.records:
                event = record.event_log_entry.dagster_event
                if event is not None and event.event_type in STEP_EVENTS:
                    elapsed = time.monotonic() - started
                    which = f"run {run_id[:8]} " if several else ""
                    what = STEP_EVENTS[event.event_type]
                    say(f"  [{elapsed:6.1f}s] {which}{event.step_key}: {what}")
        if finished:
            return
        done.wait(0.5)
