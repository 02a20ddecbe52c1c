"""Issue 30: op outputs in shared storage are data (JSON), never unpickled.

Whoever can write to the bucket must not be able to run code in the container that holds every
secret: a pickle planted where Dagster's FilesystemIOManager kept outputs, or in place of ours,
is never loaded.
"""

from __future__ import annotations

import builtins
import json
import pickle
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import dagster as dg
import pytest

from sync_assets.definitions import defs
from sync_assets.defs.op_outputs import (
    FOLDER,
    MAX_DEPTH,
    OpOutputNotStorable,
    OpOutputUnreadable,
    decode,
    encode,
)
from sync_assets.object_storage import ObjectStore
from sync_assets.runs.execution import QUIET_LOGGERS
from sync_assets.settings import storage_url

from .conftest import World
from .test_certificate_definitions import _sync_with_platform_progress


def daily_certificates() -> dg.JobDefinition:
    """For `dg.reconstructable`: a re-execution loads the job again, as the daemon's would."""
    return defs.resolve_job_def("daily_certificates_job")


class _CreatesAFile:
    """A pickle that, when loaded, creates a file: the planted payload's visible effect."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (str(self.path), "w"))


def _reexecute(instance: dg.DagsterInstance, parent: str) -> dg.ExecuteJobResult:
    """The second step alone, its input the first step's output stored by the parent run."""
    return dg.execute_job(
        dg.reconstructable(daily_certificates),
        instance,
        run_config=QUIET_LOGGERS,
        reexecution_options=dg.ReexecutionOptions(
            parent_run_id=parent, step_selection=["complete_due_certificates"]
        ),
        raise_on_error=False,
    )


def test_certificate_outputs_are_json_read_back_by_a_reexecution_never_unpickled(
    world: World, tmp_path: Path
) -> None:
    with dg.DagsterInstance.get() as instance:
        events = _sync_with_platform_progress(world, instance)
        with dg.execute_job(
            dg.reconstructable(daily_certificates), instance, run_config=QUIET_LOGGERS
        ) as parent:
            assert parent.success
            handled = parent.output_for_node("handle_completion_events")
            parent_id = parent.run_id
        assert handled == events > 0

        store = ObjectStore(storage_url())
        ours = f"{FOLDER}/{parent_id}/handle_completion_events/result.json"
        assert store.keys(f"{FOLDER}/{parent_id}") == [
            f"{FOLDER}/{parent_id}/complete_due_certificates/result.json",
            ours,
        ]
        with store.open(ours) as stored:
            assert json.loads(stored.read()) == handled  # data a person can read, not pickle

        # A pickle where FilesystemIOManager kept the output (`<run>/<step>/result`): ignored.
        created = tmp_path / "created-by-a-pickle"
        payload = pickle.dumps(_CreatesAFile(created))
        store.write(
            f"{FOLDER}/{parent_id}/handle_completion_events/result",
            lambda path: path.write_bytes(payload),
        )
        with _reexecute(instance, parent_id) as again:
            assert again.success
            loaded = [
                event
                for event in again.all_events
                if event.event_type == dg.DagsterEventType.LOADED_INPUT
            ]
            assert [event.step_key for event in loaded] == ["complete_due_certificates"]
        assert not created.exists()

        # A pickle in place of our JSON: refused as not JSON, never run.
        store.write(ours, lambda path: path.write_bytes(payload))
        with _reexecute(instance, parent_id) as refused:
            assert not refused.success
            failure = next(
                event
                for event in refused.all_events
                if event.event_type == dg.DagsterEventType.STEP_FAILURE
            )
            message = str(failure.step_failure_data.error)
        assert "the stored output 'result' of handle_completion_events is not JSON data" in message
        assert not created.exists()


# --- the rule: what JSON gives back exactly --------------------------------------------------


class Outcome(StrEnum):
    UPDATED = "updated"


@pytest.mark.parametrize(
    "value",
    [
        0,
        12_345,
        None,
        {"1": "updated", "2": "not linked"},  # a resync's outcomes
        {"verdict": "agrees", "rules": {"progress": 40, "ratio": 0.4}, "why": ["a", "b"]},
        [True, False, 1.5, "é"],
    ],
)
def test_plain_data_round_trips_with_its_types(value: object) -> None:
    back = decode(encode(value, "the output"), "the output")
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ((1, 2), "output is a tuple"),
        ({"at": datetime(2026, 1, 1, tzinfo=UTC)}, "output[key 0] is a datetime"),
        ({1: "updated"}, "output has a key of type int"),
        ({"user-7": Outcome.UPDATED}, "output[key 0] is a Outcome"),
        ([float("nan")], "output[0] is nan"),
        (10**5000, "output is an integer too long"),
        ({1, 2}, "output is a set"),
    ],
    ids=["tuple", "datetime", "int key", "enum", "nan", "huge int", "set"],
)
def test_anything_json_would_not_give_back_is_refused_when_stored(
    value: object, problem: str
) -> None:
    with pytest.raises(OpOutputNotStorable) as refused:
        encode(value, "the output 'result' of resync_learners_op")
    assert str(refused.value).startswith(
        "the output 'result' of resync_learners_op cannot be stored as data: " + problem
    )
    assert "user-7" not in str(refused.value)  # keys (user ids) are named by position


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    value: object = []
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(OpOutputNotStorable, match=f"nested more than {MAX_DEPTH} deep"):
        encode(value, "the output")


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"handled": 3}),
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json
        b"1" * 5_000,  # ValueError: Python's integer digit limit
        b"\xff\xfe not utf-8",
    ],
    ids=["pickle", "deep", "huge int", "not utf-8"],
)
def test_stored_bytes_that_are_not_json_data_are_refused(data: bytes) -> None:
    with pytest.raises(OpOutputUnreadable, match=r"^the stored output is not JSON data"):
        decode(data, "the stored output")
