"""Runs belong to the instance: under their job with their code origin, in runs of bounded size
(the nightly runs of changed courses: test_quiet_night.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from sync_assets.defs.sync.night import PER_COURSE_ASSETS
from sync_assets.defs.sync.partitions import course_chunks
from sync_assets.runs.execution import LOCATION_NAME, code_location_runs
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

PROJECT = Path(__file__).resolve().parents[2]
# The tag the UI's job page filters its Runs tab by (repository @ code location).
REPOSITORY_TAG = ".dagster/repository"


@sqlite_only  # the runs, their tags and origins are the Dagster instance's, on either database
def test_cli_runs_show_under_their_job_with_the_code_origin(world: World) -> None:
    result = world.sync()
    assert result.exit_code == 0, result.output
    with dg.DagsterInstance.get() as instance:
        listed = instance.get_runs(
            dg.RunsFilter(
                job_name="futurelearn_sync",
                tags={REPOSITORY_TAG: f"__repository__@{LOCATION_NAME}"},
            )
        )
        assert len(listed) == 1
        (run,) = listed
        # The night's check too, under its own job.
        (check,) = instance.get_runs(
            dg.RunsFilter(
                job_name="futurelearn_check",
                tags={REPOSITORY_TAG: f"__repository__@{LOCATION_NAME}"},
            )
        )
        assert check.run_id in result.output
        assert run.run_id in result.output
        assert run.remote_job_origin is not None
        assert run.remote_job_origin.location_name == LOCATION_NAME
        assert run.job_code_origin is not None
        assert (
            run.job_code_origin.repository_origin.code_pointer.module == "sync_assets.definitions"
        )
        # The same snapshot as the code location's own job: re-executing it from the UI does not
        # warn that the run "may be a different version".
        # (The night's sync run selects the partitioned assets: the check made course_runs.)
        assert run.asset_selection == set(PER_COURSE_ASSETS)
        with code_location_runs(instance) as runs:
            fresh = runs.create("futurelearn_sync", {}, {}, PER_COURSE_ASSETS)
        assert fresh.job_snapshot_id == run.job_snapshot_id
        certificates = instance.get_runs(dg.RunsFilter(job_name="daily_certificates_job"))
        assert len(certificates) == 1 and certificates[0].remote_job_origin is not None


@pytest.mark.parametrize(
    ("per_run", "expected"), [(None, [[*"abcdefg"]]), (3, [[*"abc"], [*"def"], ["g"]])]
)
def test_course_chunks_are_consecutive_and_cover_every_course(
    per_run: int | None, expected: list[list[str]]
) -> None:
    assert course_chunks(list("abcdefg"), per_run) == expected
    assert course_chunks([], per_run) == []


def test_submit_without_a_queue_says_what_to_change(world: World) -> None:
    home = Path(os.environ["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n"
        "  class: DefaultRunCoordinator\ntelemetry:\n  enabled: false\n"
    )
    result = world.sync("--submit")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: --submit: the Dagster instance does not queue runs: set run_coordinator to "
        "QueuedRunCoordinator in $DAGSTER_HOME/dagster.yaml and run dagster-daemon"
    )


def _load(env: dict[str, str], code: str = "") -> subprocess.CompletedProcess[str]:
    """Load the code location in a process of its own, as a code server would."""
    return subprocess.run(
        [sys.executable, "-c", code or "import sync_assets.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT,
    )


DEPLOYMENT = {
    "SYNC_ASSETS_PROFILE": "deployment",
    "FL_PARTNERS_URL": "https://partners.example.org",
    "FL_PARTNERS_CONSUMER_KEY": "key",
    "FL_PARTNERS_CONSUMER_SECRET": "a-secret-that-never-reaches-config",
    "PLATFORM_DATABASE_URL": "postgresql://platform@db.example.org/platform",
    "SYNC_ASSETS_STORAGE_URL": "s3://sync-assets/storage",
    "SYNC_ASSETS_HTTP_CACHE_URL": "redis://cache.example.org:6379/0",
    "SYNC_ASSETS_PSEUDONYM_KEY": "a-pseudonym-key-that-never-reaches-config",
    "SYNC_ASSETS_HTTP_CACHE_PASSWORD": "a-redis-password-from-a-secret",
}
# Each resource's configured fields, as `name=Type:value` (an EnvVar's value is its name).
SHOW_RESOURCES = """
from sync_assets.definitions import defs
for key, resource in sorted(defs.resources.items()):
    fields = getattr(resource, "_get_non_default_public_field_values", dict)()
    print(key, " ".join(
        f"{k}={type(v).__name__}:{getattr(v, 'env_var_name', v)}" for k, v in sorted(fields.items())
    ))
"""


def _base_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FL_PARTNERS_", "SYNC_ASSETS_", "PLATFORM_DATABASE_URL"))
    }


def test_a_deployment_without_a_required_setting_fails_at_load_in_one_line() -> None:
    env = _base_env() | DEPLOYMENT
    del env["FL_PARTNERS_URL"], env["SYNC_ASSETS_HTTP_CACHE_URL"]
    loaded = _load(env)
    assert loaded.returncode != 0
    assert (
        "ConfigurationError: FL_PARTNERS_URL, SYNC_ASSETS_HTTP_CACHE_URL: required with "
        "SYNC_ASSETS_PROFILE=deployment" in loaded.stderr.splitlines()[-1]
    )
    checked = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "check", "defs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=PROJECT,
    )
    assert checked.returncode != 0
    assert (
        "FL_PARTNERS_URL, SYNC_ASSETS_HTTP_CACHE_URL: required" in checked.stdout + checked.stderr
    )


def test_a_deployment_reads_its_settings_from_the_environment_not_from_config() -> None:
    """Issue 30: an `EnvVar` field is only a default that run config overrides; a deployment's
    resources have no connection field at all (test_run_config_boundaries checks every job)."""
    loaded = _load(_base_env() | DEPLOYMENT, SHOW_RESOURCES)
    assert loaded.returncode == 0, loaded.stderr
    resources = dict(line.split(" ", 1) for line in loaded.stdout.splitlines())
    assert set(resources) == {"io_manager", "op_io_manager", "partners_api", "platform_database"}
    assert all(fields == "" for fields in resources.values()), resources
    assert DEPLOYMENT["FL_PARTNERS_CONSUMER_SECRET"] not in loaded.stdout


def test_the_local_profile_keeps_the_embedded_defaults() -> None:
    loaded = _load(_base_env(), SHOW_RESOURCES)
    assert loaded.returncode == 0, loaded.stderr
    assert "EnvVar" not in loaded.stdout


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_each_run_executed_here_counts_its_own_peak_memory() -> None:
    """A second run in one command does not report the first run's peak as its own."""
    import resource

    from sync_assets.runs.execution import _reset_peak_memory

    big = bytearray(300 * 1024 * 1024)  # an earlier run's peak, touched so it is resident
    big[::4096] = b"x" * len(big[::4096])
    del big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _reset_peak_memory()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert before - after > 250 * 1024  # KiB


WEBHOOK_TOKEN = "a-token-never-repeated"  # a webhook path, a Redis password


def _deployment(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    for name in list(os.environ):
        if name.startswith(("FL_PARTNERS_", "SYNC_ASSETS_", "PLATFORM_DATABASE_URL")):
            monkeypatch.delenv(name)
    for name, value in (DEPLOYMENT | settings).items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "FL_PARTNERS_URL",
            "http://partners.example.org",
            "FL_PARTNERS_URL: must be an https:// URL with SYNC_ASSETS_PROFILE=deployment",
        ),
        (
            "SYNC_ASSETS_ALERT_WEBHOOK_URL",
            f"http://hooks.example.org/services/T000/B000/{WEBHOOK_TOKEN}",
            "SYNC_ASSETS_ALERT_WEBHOOK_URL: must be an https:// URL with "
            "SYNC_ASSETS_PROFILE=deployment",
        ),
        (
            "SYNC_ASSETS_ALERT_WEBHOOK_URL",  # 127.0.0.1 as a name under another domain
            f"http://127.0.0.1.example.org/{WEBHOOK_TOKEN}",
            "SYNC_ASSETS_ALERT_WEBHOOK_URL: must be an https:// URL",
        ),
        (
            "SYNC_ASSETS_HTTP_CACHE_URL",
            f"rediss://:{WEBHOOK_TOKEN}@cache.example.org:6380/0?ssl_cert_reqs=none",
            "SYNC_ASSETS_HTTP_CACHE_URL: certificate checks cannot be turned off with "
            "SYNC_ASSETS_PROFILE=deployment",
        ),
        (
            "SYNC_ASSETS_HTTP_CACHE_PASSWORD",  # the Redis then requires none
            "",
            "SYNC_ASSETS_HTTP_CACHE_URL: a Redis without a password with "
            "SYNC_ASSETS_PROFILE=deployment: set SYNC_ASSETS_HTTP_CACHE_PASSWORD",
        ),
        (
            "SYNC_ASSETS_HTTP_CACHE_URL",
            "rediss://cache.example.org:6380/0?ssl_cert_reqs=optional",
            "SYNC_ASSETS_HTTP_CACHE_URL: certificate checks cannot be turned off",
        ),
        (
            "SYNC_ASSETS_HTTP_CACHE_URL",
            "rediss://cache.example.org:6380/0?ssl_check_hostname=False",
            "SYNC_ASSETS_HTTP_CACHE_URL: certificate checks cannot be turned off",
        ),
        (
            "SYNC_ASSETS_HTTP_CACHE_URL",  # redis-py reads the first; both are refused
            "rediss://cache.example.org:6380/0?ssl_check_hostname=true&ssl_check_hostname=no",
            "SYNC_ASSETS_HTTP_CACHE_URL: certificate checks cannot be turned off",
        ),
    ],
)
def test_a_deployment_refuses_plain_http_and_unchecked_tls_naming_the_setting(
    setting: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the bearer token, a webhook's token or the cache's password would travel in clear
    or to a server nobody checked, a deployment does not load (local runs are not concerned)."""
    from sync_assets.settings import ConfigurationError, check_settings

    _deployment(monkeypatch, **{setting: value})
    if setting == "SYNC_ASSETS_ALERT_WEBHOOK_URL":  # alerts go to the UI's runs
        monkeypatch.setenv("SYNC_ASSETS_UI_URL", "https://dagster.example.org")
    with pytest.raises(ConfigurationError) as raised:
        check_settings()
    assert str(raised.value).startswith(message)
    assert raised.value.setting in (setting, "SYNC_ASSETS_HTTP_CACHE_URL")
    assert WEBHOOK_TOKEN not in str(raised.value) and "example.org" not in str(raised.value)

    monkeypatch.setenv("SYNC_ASSETS_PROFILE", "local")
    check_settings()


def test_a_deployment_takes_https_loopback_http_and_checked_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sync_assets.settings import check_settings

    for partners, webhook, cache, password in [
        (
            "https://partners.example.org",
            "https://hooks.example.org/x",
            "redis://cache:6379/0",
            "p",
        ),
        ("http://127.0.0.1:8080", "http://localhost:9000/x", "rediss://:pw@cache:6380/0", ""),
        ("http://[::1]:8080", "http://127.8.0.1/x", "redis://127.0.0.1:6379/0", ""),
        (
            "https://partners.example.org",
            "https://hooks.example.org/x",
            "rediss://cache:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
            "p",
        ),
    ]:
        _deployment(
            monkeypatch,
            FL_PARTNERS_URL=partners,
            SYNC_ASSETS_ALERT_WEBHOOK_URL=webhook,
            SYNC_ASSETS_HTTP_CACHE_URL=cache,
            SYNC_ASSETS_HTTP_CACHE_PASSWORD=password,
        )
        check_settings()
