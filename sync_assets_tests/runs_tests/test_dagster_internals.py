"""The private Dagster APIs the package relies on: the behaviour of each pinned (Dagster 1.13.27),
and no module but the adapters using any.

sync_assets/runs/dagster_internals.py wraps each private API `runs/` needs in a function whose
docstring names the behaviour relied on; each test below is named after that behaviour, so a
Dagster upgrade that changes one fails here, not in an end-to-end test three layers away. The runs
are of a code location of two small jobs (two_jobs_location.py), so a failure is Dagster's.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

import sync_assets
from sync_assets.runs.dagster_internals import (
    InProcessCodeLocation,
    code_location_in_this_process,
    create_run_of_code_location_job,
    execute_run_in_this_process,
    start_run_in_child_process,
    submit_run_to_coordinator,
)

PACKAGE = Path(sync_assets.__file__).resolve().parent
PROJECT = PACKAGE.parent
MODULE = "sync_assets_tests.runs_tests.two_jobs_location"
LOCATION = "two_jobs"
# The tag the UI's job page filters its Runs tab by (repository @ code location).
REPOSITORY_TAG = ".dagster/repository"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def location(instance: dg.DagsterInstance) -> Iterator[InProcessCodeLocation]:
    with code_location_in_this_process(instance, MODULE, str(PROJECT), LOCATION) as location:
        yield location


def _events(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id))


# --- each private API's behaviour -----------------------------------------------------------------


def test_an_in_process_workspace_load_target_serves_the_module_in_this_process_under_its_name(
    location: InProcessCodeLocation,
) -> None:
    """`code_location_in_this_process`: the module's Definitions, imported here, are the location's
    one repository, under the location name given (the name runs carry and the UI matches)."""
    import sys

    assert location.location.name == LOCATION
    (repository,) = location.location.get_repositories().values()
    assert repository.name == "__repository__"
    assert {job.name for job in repository.get_all_jobs()} >= {"succeeds", "fails"}
    assert MODULE in sys.modules  # loaded in this process, not by a code server


def test_a_run_created_from_the_location_job_carries_its_origins_snapshot_and_repository_tag(
    instance: dg.DagsterInstance, location: InProcessCodeLocation
) -> None:
    """`create_run_of_code_location_job`: what the UI lists under the job, can re-execute without
    a "different version" warning, and what a run coordinator accepts."""
    from sync_assets_tests.runs_tests.two_jobs_location import defs

    run = create_run_of_code_location_job(
        location, instance, "succeeds", {"loggers": {}}, {"ours": "a tag"}
    )
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None and stored.status == dg.DagsterRunStatus.NOT_STARTED
    assert stored.remote_job_origin is not None
    assert stored.remote_job_origin.location_name == LOCATION
    assert stored.job_code_origin is not None
    assert stored.job_code_origin.repository_origin.code_pointer.module == MODULE
    listed = instance.get_runs(dg.RunsFilter(tags={REPOSITORY_TAG: f"__repository__@{LOCATION}"}))
    assert [listed_run.run_id for listed_run in listed] == [run.run_id]
    assert stored.tags["ours"] == "a tag"
    assert stored.tags["from_the_job"] == "a tag of the job's own"
    assert stored.run_config == {"loggers": {}}
    assert stored.job_snapshot_id == defs.resolve_job_def("succeeds").get_job_snapshot_id()
    assert stored.execution_plan_snapshot_id is not None


def test_a_created_run_executes_in_this_process_with_its_events_under_its_id(
    instance: dg.DagsterInstance, location: InProcessCodeLocation
) -> None:
    """`execute_run_in_this_process`: the run is not launched elsewhere; with the in-process
    executor its steps run in this very process (the peak memory a run reports is this process's),
    the run ends SUCCESS, and its events are the instance's under the run's id."""
    run = create_run_of_code_location_job(location, instance, "succeeds", {}, {})
    execute_run_in_this_process(instance, run)
    ended = instance.get_run_by_id(run.run_id)
    assert ended is not None and ended.status == dg.DagsterRunStatus.SUCCESS
    messages = [entry.user_message for entry in _events(instance, run.run_id)]
    assert f"executed in process {os.getpid()}" in messages
    types = {e.dagster_event.event_type for e in _events(instance, run.run_id) if e.dagster_event}
    assert {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.RUN_SUCCESS} <= types


def test_a_created_run_whose_step_fails_ends_failed_without_raising(
    instance: dg.DagsterInstance, location: InProcessCodeLocation
) -> None:
    """`execute_run_in_this_process`: a failed step does not raise out of the call (the command
    then reports the run from its event log)."""
    run = create_run_of_code_location_job(location, instance, "fails", {}, {})
    execute_run_in_this_process(instance, run)  # raises nothing
    ended = instance.get_run_by_id(run.run_id)
    assert ended is not None and ended.status == dg.DagsterRunStatus.FAILURE
    (failure,) = [
        entry.dagster_event
        for entry in _events(instance, run.run_id)
        if entry.dagster_event
        and entry.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE
    ]
    assert failure.step_key == "fail"


def test_a_created_run_started_in_a_child_process_executes_there_and_ends_it(
    instance: dg.DagsterInstance, location: InProcessCodeLocation
) -> None:
    """`start_run_in_child_process`: the call returns a process of its own, the run's steps run
    in it (not here), and it ends the run, SUCCESS or FAILURE, then exits 0."""
    succeeds = create_run_of_code_location_job(location, instance, "succeeds", {}, {})
    fails = create_run_of_code_location_job(location, instance, "fails", {}, {})
    children = [start_run_in_child_process(instance, run) for run in (succeeds, fails)]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    statuses = [instance.get_run_by_id(run.run_id).status for run in (succeeds, fails)]  # type: ignore[union-attr]
    assert statuses == [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
    messages = [entry.user_message for entry in _events(instance, succeeds.run_id)]
    assert f"executed in process {children[0].pid}" in messages
    assert f"executed in process {os.getpid()}" not in messages


def test_a_run_submitted_with_the_in_process_workspace_is_queued_and_not_launched() -> None:
    """`submit_run_to_coordinator`: with a QueuedRunCoordinator the run waits, QUEUED, for the
    daemon; nothing is launched from this process."""
    coordinator = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    queued = {"run_coordinator": coordinator}
    with dg.instance_for_test(overrides=queued) as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        with code_location_in_this_process(instance, MODULE, str(PROJECT), LOCATION) as location:
            run = create_run_of_code_location_job(location, instance, "succeeds", {}, {})
            submit_run_to_coordinator(location, instance, run.run_id)
        submitted = instance.get_run_by_id(run.run_id)
        assert submitted is not None and submitted.status == dg.DagsterRunStatus.QUEUED
        types = {e.dagster_event_type for e in _events(instance, run.run_id)}
        assert dg.DagsterEventType.RUN_STARTING not in types


# --- nobody else uses Dagster's private APIs ------------------------------------------------------
# The modules that may: this one for runs/, the assets' adapter, and the embedded default's
# instance (Dagster's SQLite storage subclassed; pinned by test_dagster_instance.py).
DAGSTER_ADAPTERS = frozenset(
    {
        "sync_assets/runs/dagster_internals.py",
        "sync_assets/defs/sync/course_step.py",
        "sync_assets/runs/held_sqlite.py",
    }
)
# Namedtuple's (and SQLAlchemy Row's) documented API, private only in name.
PUBLIC_UNDERSCORE_NAMES = frozenset({"_asdict", "_replace", "_fields", "_make", "_field_defaults"})


def _modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(PROJECT).as_posix(): ast.parse(path.read_text(), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _own_private_names(modules: dict[str, ast.Module]) -> set[str]:
    """The private names the package defines itself: its functions, classes and module globals,
    and the attributes its classes keep on `self` or `cls`."""
    names: set[str] = set()
    for tree in modules.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and _is_self(node.value):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {name for name in names if _is_private(name)}


def _private_imports(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {alias.name}"
                for alias in node.names
                if alias.name.startswith("dagster._")
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("dagster._") or (
                node.module == "dagster" and any(_is_private(a.name) for a in node.names)
            ):
                found.append(f"line {node.lineno}: from {node.module} import …")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("dagster._")
        ):
            found.append(f"line {node.lineno}: {node.args[0].value!r} imported by name")
    return found


def _private_attributes(tree: ast.Module, own: set[str]) -> list[str]:
    """Private attributes read or written on an object that is not the package's own."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not _is_self(node.value):
            name = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
        else:
            continue
        if _is_private(name) and name not in own and name not in PUBLIC_UNDERSCORE_NAMES:
            found.append(f"line {node.lineno}: .{name}")
    return found


def _private_uses() -> dict[str, list[str]]:
    """Each module's imports of Dagster's private modules and uses of others' private attributes."""
    modules = _modules()
    own = _own_private_names(modules)
    uses = {
        path: _private_imports(tree) + _private_attributes(tree, own)
        for path, tree in modules.items()
    }
    return {path: found for path, found in uses.items() if found}


def test_no_module_but_the_adapters_uses_a_private_dagster_api() -> None:
    """Dagster's private modules and the private attributes of its objects are used only in
    runs/dagster_internals.py, defs/sync/course_step.py and runs/held_sqlite.py, so an upgrade
    touches those alone."""
    elsewhere = {
        path: kept
        for path, found in _private_uses().items()
        if path not in DAGSTER_ADAPTERS
        for kept in [[use for use in found if (path, use.split(": ")[1]) not in NOT_DAGSTERS]]
        if kept
    }
    assert elsewhere == {}


# Another library's private attribute, each named with why, and pinned by a test that fails
# when the library drops it: aiohttp resends a look-up unseen when a kept-alive connection
# drops unless `_retry_connection` is off (pinned by test_client_http.py's "drop" fault case:
# its retries then count 0 instead of 2).
NOT_DAGSTERS = {("sync_assets/partners_api/lookups_wire.py", "._retry_connection")}


def test_the_check_sees_each_kind_of_private_use() -> None:
    """The check above is not blind: it finds each form it looks for, and passes the package's
    own private names and namedtuple's API."""
    tree = ast.parse(
        "import dagster._core.events\n"
        "from dagster._core.event_api import EventLogCursor\n"
        "from dagster import _check\n"
        "importlib.import_module('dagster._utils')\n"
        "step = context._step_execution_context\n"
        "getattr(step, '_metadata_accumulator')\n"
        "row._asdict(); self._cache; dataset._cache; obj.__dict__\n"
    )
    assert len(_private_imports(tree)) == 4
    assert _private_attributes(tree, own={"_cache"}) == [
        "line 5: ._step_execution_context",
        "line 6: ._metadata_accumulator",
    ]
