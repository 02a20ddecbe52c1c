"""S2 through the GraphQL API of a real `dagster-webserver` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets_tests.conftest import sqlite_only
from sync_assets_tests.processes import free_port, stop

from .conftest import World

PROJECT = Path(__file__).resolve().parents[2]
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def _resync_params(run_config: dict) -> dict:
    """launchRun's ExecutionParams for the resync job with this run config."""
    return {
        "selector": {
            "repositoryLocationName": "sync_assets",
            "repositoryName": "__repository__",
            "jobName": "resync_learners_job",
        },
        "runConfigData": run_config,
    }


@pytest.fixture
def webserver(world: World, tmp_path: Path):
    home = Path(os.environ["DAGSTER_HOME"])
    # Launch runs at once (no daemon in this test): the default run coordinator.
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster.core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            "-w",
            str(PROJECT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session, stopped whole: the code server it starts outlived a SIGTERM to it
        # alone (found still running 40 minutes after the suite).
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("dagster-webserver did not start")
        yield url
    finally:
        stop(process)


# SQLite only: a launch through the webserver's GraphQL: Dagster's side; the resync's writes are
# test_resync's, on both.
@sqlite_only
def test_resync_launched_through_graphql(world: World, webserver: str) -> None:
    catalogue = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
    enrolled = (
        world.dataset.enrolments.join(world.dataset.runs, on="run_uuid")
        .join(world.dataset.memberships, on="membership_uuid")
        .filter(
            pl.col("course_uuid").is_in(list(catalogue))
            & pl.col("external_learner_id").is_in(world.dataset.users["id"].implode())
        )
    )
    course, user = enrolled.select("course_uuid", "external_learner_id").row(0)
    params = _resync_params(
        {"ops": {"resync_learners_op": {"config": {"course_uuid": course, "user_ids": [user]}}}}
    )
    with httpx.Client(base_url=webserver, timeout=30) as client:
        launched = client.post(
            "/graphql", json={"query": LAUNCH, "variables": {"params": params}}
        ).json()
        assert launched["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["data"]["launchRun"]["run"]["runId"]
        status = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            answer = client.post(
                "/graphql", json={"query": STATUS, "variables": {"id": run_id}}
            ).json()
            status = answer["data"]["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(0.25)  # a poll: the run takes seconds, the answer comes at once
    assert status == "SUCCESS"
    achievements = world.table("achievements")
    assert {(row["user_id"], row["activity_id"]) for row in achievements} == {
        (user, catalogue[course])
    }


# SQLite only: a launch through the webserver's GraphQL: Dagster's side; the resync's writes are
# test_resync's, on both.
@sqlite_only
def test_a_launch_that_sets_where_the_sync_connects_is_refused(
    world: World, webserver: str
) -> None:
    """Issue 30: the UI has no login, so GraphQL's launchRun is anyone's run config."""
    refused = [
        ("partners_api", "url", "https://attacker.example"),
        ("partners_api", "consumer_secret", "a-secret-of-the-attackers-own-choosing"),
        ("platform_database", "url", "postgresql://attacker.example/platform"),
        ("io_manager", "base_dir", "/tmp/attackers-folder"),
    ]
    ops = {"resync_learners_op": {"config": {"course_uuid": "c-1", "user_ids": ["1"]}}}
    with httpx.Client(base_url=webserver, timeout=30) as client:
        for resource, field, value in refused:
            params = _resync_params(
                {"ops": ops, "resources": {resource: {"config": {field: value}}}}
            )
            answer = client.post(
                "/graphql", json={"query": LAUNCH, "variables": {"params": params}}
            ).json()["data"]["launchRun"]
            assert answer["__typename"] == "RunConfigValidationInvalid", (field, answer)
            assert any(
                f'unexpected config entry "{field}"' in e["message"] for e in answer["errors"]
            )
        runs = client.post("/graphql", json={"query": "{ runsOrError { ... on Runs { count } } }"})
    assert runs.json()["data"]["runsOrError"]["count"] == 0  # nothing was launched
