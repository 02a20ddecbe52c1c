"""The Dagster instance at DAGSTER_HOME, opened for a command-line run."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from filelock import FileLock

from sync_assets.runs.status import IN_FLIGHT
from sync_assets.settings import ConfigurationError, data_dir, project_dir

LAUNCHED_BY_TAG, HOST_TAG, PID_TAG = (
    "sync_assets/launched_by",
    "sync_assets/host",
    "sync_assets/pid",
)
INSTANCE_LOCK_TIMEOUT_SECONDS = 300


def cli_run_tags() -> dict[str, str]:
    """Who runs a run executed by this process, so a later command can tell it died."""
    return {
        LAUNCHED_BY_TAG: "cli",
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }


def submitted_run_tags() -> dict[str, str]:
    """A run queued for the daemon: its process is the launcher's, not this command's."""
    return {LAUNCHED_BY_TAG: "cli --submit", HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_dead_cli_runs(instance: dg.DagsterInstance, say: Callable[[str], None] = print) -> int:
    """Mark failed the runs a killed `sync-assets` process on this host left running.

    An in-process run whose process was killed (`kill -9`, OOM, power cut) stays STARTED for ever
    and keeps its concurrency pool slots, so every later run would wait for them. The daemon's
    run monitoring does this for runs it launched; this does it for the command line's own.
    """
    host = socket.gethostname()
    records = instance.get_runs(
        dg.RunsFilter(statuses=IN_FLIGHT, tags={LAUNCHED_BY_TAG: "cli", HOST_TAG: host})
    )
    reaped = 0
    for run in records:
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid <= 0 or pid == os.getpid() or process_alive(pid):
            continue
        instance.report_run_failed(
            run, f"the sync-assets process (pid {pid}) running it ended without finishing it"
        )
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        say(
            f"Run {run.run_id} ({run.job_name}) was left running by a killed process: marked failed"
        )
        reaped += 1
    return reaped


@contextmanager
def open_instance(say: Callable[[str], None] = print) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance at DAGSTER_HOME, ready for a command-line run.

    Two commands starting together on a new home would both create its SQLite storage and one
    would crash; a lock file in the home makes them take turns for the set-up only.
    """
    home = ensure_dagster_home()
    with FileLock(home / ".sync_assets.lock", timeout=INSTANCE_LOCK_TIMEOUT_SECONDS):
        try:
            instance = dg.DagsterInstance.get()
        except Exception as error:  # a dagster.yaml it cannot use, storage it cannot open
            problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ConfigurationError(
                "DAGSTER_HOME",
                f"the Dagster instance at {home} cannot be opened: {type(error).__name__}: "
                f"{problem} (check {home / 'dagster.yaml'})",
            ) from None
        reap_dead_cli_runs(instance, say)
    with instance:
        yield instance


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to data/dagster_home with the project's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or data_dir() / "dagster_home").resolve()
    config = home / "dagster.yaml"
    template = project_dir() / "dagster.yaml"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not config.exists() and template.exists():
            shutil.copy(template, config)
        probe = home / ".sync_assets.lock"
        probe.touch()
    except OSError as error:
        why = "it is a file, not a folder" if home.is_file() else error.strerror
        raise ConfigurationError(
            "DAGSTER_HOME", f"{home} cannot be used as the Dagster instance: {why}"
        ) from None
    os.environ["DAGSTER_HOME"] = str(home)
    return home
