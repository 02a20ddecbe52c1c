"""A step that waits for its turn (runs/turns.py): until the run before it has passed its turn
or ended the step, has ended, or has lost its process; never for a run it does not follow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import dagster as dg

from sync_assets.runs.instance import HOST_TAG, PID_TAG
from sync_assets.runs.turns import (
    PARENT_RUN_TAG,
    PREVIOUS_RUN_TAG,
    SLOT_AFTER_RUN_TAG,
    Waited,
    pass_turn,
    wait_for_slot,
    wait_for_turn,
)

STEP = "linked_memberships"


def _previous_run(instance: dg.DagsterInstance, pid: int, host: str | None = None) -> str:
    """A run executing (STARTED) in process `pid` on `host` (this one by default)."""
    run = instance.add_run(
        dg.DagsterRun(
            job_name="futurelearn_sync",
            status=dg.DagsterRunStatus.STARTED,
            tags={PID_TAG: str(pid), HOST_TAG: host or socket.gethostname()},
        )
    )
    return run.run_id


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _waiting(
    instance: dg.DagsterInstance, tags: dict[str, str], slot: bool = False
) -> tuple[threading.Thread, list]:
    """A thread waiting for the turn at STEP (or, with `slot`, for the run's slot)."""
    result: list[Waited | None] = []

    def wait() -> None:
        result.append(
            wait_for_slot(instance, tags) if slot else wait_for_turn(instance, tags, STEP)
        )

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, result


def _end_and_join(instance: dg.DagsterInstance, run_id: str, thread: threading.Thread) -> None:
    """Once the thread has waited a second: end the run it waits for; the wait ends with it."""
    thread.join(timeout=1.0)
    assert thread.is_alive()
    run = instance.get_run_by_id(run_id)
    assert run is not None
    instance.report_run_failed(run, "ended")
    thread.join(timeout=5.0)
    assert not thread.is_alive()


def test_a_run_that_follows_none_or_was_re_executed_does_not_wait() -> None:
    with dg.instance_for_test() as instance:
        previous = _previous_run(instance, pid=os.getpid())
        assert wait_for_turn(instance, {}, STEP) is None
        re_executed = {PREVIOUS_RUN_TAG: previous, PARENT_RUN_TAG: "an-earlier-run"}
        assert wait_for_turn(instance, re_executed, STEP) is None


def test_the_step_waits_while_the_run_before_executes_and_goes_on_when_it_ends() -> None:
    with dg.instance_for_test() as instance:
        previous = _previous_run(instance, pid=os.getpid())
        thread, result = _waiting(instance, {PREVIOUS_RUN_TAG: previous})
        _end_and_join(instance, previous, thread)  # waited while its step had not ended
        assert result[0] is not None and result[0].run_id == previous
        assert result[0].seconds >= 1.0


def test_the_step_goes_on_once_the_run_before_passed_its_turn_at_that_step_only() -> None:
    """Linking passes its turn once its look-ups are stored, while it goes on matching."""
    with dg.instance_for_test() as instance:
        previous = _previous_run(instance, pid=os.getpid())
        thread, result = _waiting(instance, {PREVIOUS_RUN_TAG: previous})
        pass_turn(instance, previous, "another_step")
        thread.join(timeout=1.0)
        assert thread.is_alive()  # a turn passed at another step is not this one's
        pass_turn(instance, previous, STEP)
        thread.join(timeout=5.0)
        assert not thread.is_alive()
        assert result[0] is not None and result[0].run_id == previous
        run = instance.get_run_by_id(previous)
        assert run is not None and run.status == dg.DagsterRunStatus.STARTED


def test_a_run_before_whose_process_died_on_this_host_is_not_waited_for() -> None:
    """Killed with its process, a run stays STARTED until a later command reaps it."""
    with dg.instance_for_test() as instance:
        previous = _previous_run(instance, pid=_dead_pid())
        waited = wait_for_turn(instance, {PREVIOUS_RUN_TAG: previous}, STEP)
        assert waited is not None and waited.seconds < 1.0


def test_a_process_id_of_another_host_is_not_taken_for_one_of_this_host() -> None:
    with dg.instance_for_test() as instance:
        previous = _previous_run(instance, pid=_dead_pid(), host="another-host")
        thread, _ = _waiting(instance, {PREVIOUS_RUN_TAG: previous})
        _end_and_join(instance, previous, thread)  # waited: the dead pid is another host's


def test_a_run_past_the_slots_waits_until_the_run_whose_slot_it_takes_has_ended() -> None:
    """Its process started early, a run's first step waits for the run's slot: the earlier
    run's passed turn does not free it, only its end (or its process's)."""
    with dg.instance_for_test() as instance:
        earlier = _previous_run(instance, pid=os.getpid())
        thread, result = _waiting(instance, {SLOT_AFTER_RUN_TAG: earlier}, slot=True)
        pass_turn(instance, earlier, STEP)
        _end_and_join(instance, earlier, thread)  # waited past the passed turn
        assert result[0] is not None and result[0].run_id == earlier
        assert result[0].seconds >= 1.0
        dead = _previous_run(instance, pid=_dead_pid())
        waited = wait_for_slot(instance, {SLOT_AFTER_RUN_TAG: dead})
        assert waited is not None and waited.seconds < 1.0
        assert wait_for_slot(instance, {}) is None
        re_executed = {SLOT_AFTER_RUN_TAG: _previous_run(instance, pid=os.getpid())}
        assert wait_for_slot(instance, {**re_executed, PARENT_RUN_TAG: "an-earlier-run"}) is None
