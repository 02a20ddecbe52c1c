"""The private Dagster APIs that `runs/` needs, and only those (checked with Dagster 1.13.27).

Dagster has no public API to create a run of a code location's job as its own launchers do (with
the job's snapshot, execution plan, remote origin and code origin), to execute such a run in this
process, or to load a code location in this process. Each function here names the Dagster
behaviour it relies on, and sync_assets_tests/runs_tests/test_dagster_internals.py pins each one:
an upgrade that changes one fails the test named after it. The same test checks that no other
module of the package imports `dagster._…` or reads a private attribute of a Dagster object, but
the assets' adapter, sync_assets/defs/sync/course_step.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.code_location import CodeLocation
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._grpc.types import ExecuteRunArgs
from dagster._utils.hosted_user_process import recon_job_from_origin


@dataclass(frozen=True)
class InProcessCodeLocation:
    """A code location loaded in this process, and the workspace that loaded it (opaque to the
    callers: they pass it back to the functions below)."""

    name: str
    location: CodeLocation
    workspace: WorkspaceProcessContext


@contextmanager
def code_location_in_this_process(
    instance: dg.DagsterInstance, module_name: str, working_directory: str, location_name: str
) -> Iterator[InProcessCodeLocation]:
    """The Definitions of `module_name` loaded in this process as the code location
    `location_name`, for as long as the context is open.

    Relies on (Dagster 1.13.27): a `WorkspaceProcessContext` over an `InProcessWorkspaceLoadTarget`
    of an `InProcessCodeLocationOrigin` imports the module in this process (no gRPC server) and
    serves it under the given location name, with the module's Definitions as its one repository.
    """
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=module_name,
            working_directory=working_directory,
        ),
        location_name=location_name,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        location = workspace.create_request_context().get_code_location(location_name)
        yield InProcessCodeLocation(name=location_name, location=location, workspace=workspace)


def create_run_of_code_location_job(
    code_location: InProcessCodeLocation,
    instance: dg.DagsterInstance,
    job_name: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> dg.DagsterRun:
    """A run of `job_name` (of its assets `asset_selection` only, if given) recorded in the
    instance, NOT_STARTED, as Dagster's own launchers (the UI's Launch Run, schedules and
    sensors) create it.

    Relies on (Dagster 1.13.27): `CodeLocation.get_job(JobSubsetSelector)` and
    `get_execution_plan` give the remote job and its plan; `DagsterInstance.create_run` with the
    remote job's snapshot, plan snapshot, remote origin and Python origin records a run that the
    UI lists under its job (run storage tags it `.dagster/repository` = `__repository__@<location>`
    from the remote origin), with the job snapshot id of the location's job (re-executing it from
    the UI raises no "different version" warning), and that a run coordinator accepts
    (`submit_run` requires both origins).
    """
    repository = next(iter(code_location.location.get_repositories().values()))
    remote_job = code_location.location.get_job(
        JobSubsetSelector(
            location_name=code_location.name,
            repository_name=repository.name,
            job_name=job_name,
            op_selection=None,
            asset_selection=list(asset_selection) if asset_selection is not None else None,
        )
    )
    plan = code_location.location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance
    )
    return instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=None,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**remote_job.tags, **tags},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=frozenset(asset_selection) if asset_selection is not None else None,
        asset_check_selection=None,
        asset_graph=repository.asset_graph,
    )


def execute_run_in_this_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Execute a created (NOT_STARTED) run in this process, returning when it has ended.

    Relies on (Dagster 1.13.27): `execute_run(recon_job_from_origin(run.job_code_origin), run,
    instance)` rebuilds the job from the run's code origin and executes it here, not through the
    run launcher: with the jobs' `in_process_executor` every step runs in this process (so the
    process's peak memory is the run's); it records every event under the run's id, ends the run
    SUCCESS or FAILURE, and does not raise when a step fails (`raise_on_error=False`).
    """
    assert run.job_code_origin is not None, "a run created from a code location has one"
    execute_run(recon_job_from_origin(run.job_code_origin), run, instance)


def start_run_in_child_process(
    instance: dg.DagsterInstance, run: dg.DagsterRun
) -> subprocess.Popen:
    """Start executing a created (NOT_STARTED) run in a process of its own; return at once.

    Relies on (Dagster 1.13.27): `<python> -m dagster api execute_run <ExecuteRunArgs>` is the
    command Dagster's own launchers start a run with: it opens the instance from the ref in the
    args, rebuilds the job from the run's code origin, executes every step in that process and
    ends the run SUCCESS or FAILURE, exiting 0 either way. A process killed first leaves the run
    STARTED. The interpreter is the run's code origin's (this one's, for a run created here).
    """
    origin = run.job_code_origin
    assert origin is not None, "a run created from a code location has one"
    args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=instance.get_ref())
    command = [origin.executable_path, "-m", "dagster", "api", "execute_run"]
    return subprocess.Popen([*command, dg.serialize_value(args)])


def close_storage_connections(storage: Any) -> None:
    """Close the connections a dagster-postgres storage's engine holds (runs/pooled_storage.py).

    Relies on (dagster-postgres 0.29.27): each storage keeps its SQLAlchemy engine in `_engine`,
    which `optimize_for_webserver` replaces with a pooled one, and its `dispose` leaves the engine
    alone (with NullPool it holds nothing). Pinned by test_dagster_instance.py's test of the
    production instance's connections: none left once the instance is disposed.
    """
    storage._engine.dispose()


def submit_run_to_coordinator(
    code_location: InProcessCodeLocation, instance: dg.DagsterInstance, run_id: str
) -> None:
    """Hand a created run to the instance's run coordinator, as a schedule's run is handed.

    Relies on (Dagster 1.13.27): `DagsterInstance.submit_run` takes the workspace the run's code
    location was loaded in; with a `QueuedRunCoordinator` it marks the run QUEUED and launches
    nothing (the daemon dequeues it).
    """
    instance.submit_run(run_id, code_location.workspace)
