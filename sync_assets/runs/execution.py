"""Creating, executing, queueing and following runs of the code location's jobs.

Runs are created from the code location as Dagster's own launchers create them (job snapshot,
execution plan, remote origin), so a run started by `sync-assets` shows under its job in the UI
with its code origin, and can be re-executed from there. It then either executes in this process
or is queued through the instance's run coordinator for the daemon's run launcher (`--submit`),
as the schedule's runs are. The private Dagster APIs this takes are in `dagster_internals`.
"""

from __future__ import annotations

import contextlib
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
    submit_run_to_coordinator,
)
from sync_assets.runs.instance import cli_run_tags, submitted_run_tags
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
