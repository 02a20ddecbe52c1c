"""A step that one run at a time executes, among the overlapping runs of one `sync-assets sync`.

`execute_overlapping` (runs/execution.py) starts each run once the run before it has ended its
hand-off step, and tags it with that run (PREVIOUS_RUN_TAG). A step the runs must not execute at
once (linking: two runs looking up the same new membership would ask the API twice, R2) waits
here, polling the instance, until the previous run has passed its turn (`pass_turn`: linking
passes it once its look-ups are stored, before its matching), ended that step, ended, or lost
its process. The wait is in the step, where the UI shows it, not in the launcher: the launcher can
only start a run, and each run's steps before that step need not wait.

Likewise a run's slot: at most OVERLAPPING_RUNS runs execute at once, and a run started while
they do waits in its first step until the run whose slot it takes has ended (`wait_for_slot`).
The launcher starts its process as soon as the run before it has handed off, so the process's
start (imports, the run's set-up: seconds) overlaps the runs executing, not the night's path.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from sync_assets.runs.instance import HOST_TAG, PID_TAG, process_alive
from sync_assets.runs.status import FINISHED

# On a run of `execute_overlapping` after the first: the run started before it.
PREVIOUS_RUN_TAG = "sync_assets/previous_run"
# Dagster's tag on a run re-executed from another (the UI's re-execute copies the tags).
PARENT_RUN_TAG = "dagster/parent_run_id"
# On a run of `execute_overlapping` started while OVERLAPPING_RUNS others may still execute: the
# run whose slot it takes when that run ends.
SLOT_AFTER_RUN_TAG = "sync_assets/slot_after_run"
# Set by a run on itself: the step (key) whose turn it has passed before the step's end.
TURN_PASSED_TAG = "sync_assets/turn_passed"
TURN_POLL_SECONDS = 0.2
STEP_ENDED = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_SKIPPED,
}


@dataclass(frozen=True)
class Waited:
    """Whose turn a step waited for, and how long."""

    run_id: str
    seconds: float


def step_ended(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    records = instance.get_records_for_run(run_id, of_type=STEP_ENDED).records
    return any(record.event_log_entry.step_key == step_key for record in records)


def pass_turn(instance: dg.DagsterInstance, run_id: str, step_key: str) -> None:
    """Let the next run's `step_key` go on while this run's goes on too."""
    instance.add_run_tags(run_id, {TURN_PASSED_TAG: step_key})


def wait_for_turn(
    instance: dg.DagsterInstance, tags: Mapping[str, str], step_key: str
) -> Waited | None:
    """Until the run started before this one (its PREVIOUS_RUN_TAG) has passed its turn at
    `step_key`; None when there is no such run to wait for (a run of its own, or one re-executed
    later from the UI: what it overlapped with is long over)."""
    previous = tags.get(PREVIOUS_RUN_TAG)
    if previous is None or PARENT_RUN_TAG in tags:
        return None
    started = time.monotonic()
    while not _past_step(instance, previous, step_key):
        time.sleep(TURN_POLL_SECONDS)
    return Waited(previous, time.monotonic() - started)


def wait_for_slot(instance: dg.DagsterInstance, tags: Mapping[str, str]) -> Waited | None:
    """Until the run whose slot this one takes (its SLOT_AFTER_RUN_TAG) has ended or lost its
    process; None when there is no such run (fewer runs than slots, a run of its own, or one
    re-executed later from the UI)."""
    earlier = tags.get(SLOT_AFTER_RUN_TAG)
    if earlier is None or PARENT_RUN_TAG in tags:
        return None
    started = time.monotonic()
    while not _ended(instance, earlier):
        time.sleep(TURN_POLL_SECONDS)
    return Waited(earlier, time.monotonic() - started)


def _past_step(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    """Whether a run has passed its turn at the step, ended the step, ended, or died on this
    host."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status in FINISHED or run.tags.get(TURN_PASSED_TAG) == step_key:
        return True
    return step_ended(instance, run_id, step_key) or _process_gone(run)


def _ended(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.status in FINISHED or _process_gone(run)


def _process_gone(run: dg.DagsterRun) -> bool:
    """Whether the run's process on this host is gone: a run killed with its process stays
    STARTED until a later command marks it failed."""
    pid = int(run.tags.get(PID_TAG, "0") or 0)
    here = run.tags.get(HOST_TAG) == socket.gethostname()
    return here and pid > 0 and not process_alive(pid)
