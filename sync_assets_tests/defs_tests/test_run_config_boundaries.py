"""Issue 30: run config (Launchpad, GraphQL, `dagster job execute -c`) cannot say where the sync
connects or what it signs with, in either profile: those come from the environment only.

An `EnvVar` field is only a default that run config overrides, so the settings must not be
config fields at all; `dagster.validate_run_config` is what the Launchpad and GraphQL apply.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from sync_assets.definitions import build_definitions
from sync_assets.defs.resources import PartnersApi
from sync_assets.settings import ALERT_WEBHOOK_SETTING, DEPLOYMENT_REQUIRED, ConfigurationError

# Where each resource would connect or what it would sign with, and where the alerts go: none
# of them may be a config field of any job.
REFUSED = [
    ("partners_api", "url", "https://attacker.example"),
    ("partners_api", "consumer_key", {"env": "PLATFORM_DATABASE_URL"}),
    ("partners_api", "consumer_secret", "a-secret-of-the-attackers-own-choosing"),
    ("partners_api", "cache_url", "redis://attacker.example:6379/0"),
    ("platform_database", "url", "postgresql://attacker.example/platform"),
    ("io_manager", "base_dir", "s3://attackers-bucket/storage"),
    ("op_io_manager", "base_dir", "/tmp/attackers-folder"),
    *(
        (resource, field, "https://attacker.example/hook")
        for resource in ("partners_api", "platform_database", "io_manager", "op_io_manager")
        for field in ("webhook_url", "alert_webhook_url")
    ),
]
# What run config may still tune: operational knobs, none of them a place or a credential.
KNOBS = {"concurrency", "max_requests_per_second", "max_attempts", "max_retry_seconds"}
KNOBS |= {"simulator_dataset"}  # the embedded simulator's data; unused with FL_PARTNERS_URL
# The op config a job cannot run without, so that the field under test is the only error.
REQUIRED_OP_CONFIG = {
    "resync_learners_job": {
        "resync_learners_op": {"config": {"course_uuid": "c-1", "user_ids": ["1"]}}
    },
    "explain_learner_job": {"explain_learner_op": {"config": {"course": "c-1", "user": "1"}}},
}


@pytest.fixture(params=["local", "deployment"])
def jobs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Every job of the code location as the profile builds it (the webhook set: alerts on)."""
    monkeypatch.setenv(ALERT_WEBHOOK_SETTING, "https://alerts.example.org/hook")
    if request.param == "deployment":
        monkeypatch.setenv("SYNC_ASSETS_PROFILE", "deployment")
        for name in DEPLOYMENT_REQUIRED:
            monkeypatch.setenv(name, "https://deployment.example.org/" + name.lower())
        monkeypatch.setenv("PLATFORM_DATABASE_URL", "postgresql://db.example.org/platform")
        monkeypatch.setenv("SYNC_ASSETS_STORAGE_URL", "s3://sync-assets/storage")
        monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", "redis://cache.example.org:6379/0")
    defs = build_definitions()
    found = list(defs.resolve_all_job_defs())
    assert {job.name for job in found} >= {
        "futurelearn_sync",
        "certificate_job",
        "daily_certificates_job",
        "resync_learners_job",
        "explain_learner_job",
    }
    yield found


def _base_config(job: dg.JobDefinition) -> dict:
    return {"ops": REQUIRED_OP_CONFIG[job.name]} if job.name in REQUIRED_OP_CONFIG else {}


def test_every_job_refuses_every_connection_setting_in_run_config(jobs: list) -> None:
    for job in jobs:
        base = _base_config(job)
        dg.validate_run_config(job, base)  # the control: without the field, the config is valid
        for resource, field, value in REFUSED:
            config = base | {"resources": {resource: {"config": {field: value}}}}
            with pytest.raises(dg.DagsterInvalidConfigError) as refused:
                dg.validate_run_config(job, config)
            assert f'unexpected config entry "{field}"' in str(refused.value), (job.name, field)


def _resource_config_fields(job: dg.JobDefinition) -> dict[str, set[str]]:
    resources = job.run_config_schema.config_type.fields["resources"].config_type.fields
    fields = {}
    for name, resource in resources.items():
        shape = resource.config_type.fields.get("config")
        fields[name] = set(shape.config_type.fields) if shape is not None else set()
    return fields


def test_resources_take_nothing_from_run_config_but_operational_knobs(jobs: list) -> None:
    """Catches a new field too: anything not a knob is refused by this test, not just the list."""
    for job in jobs:
        for resource, fields in _resource_config_fields(job).items():
            assert fields <= KNOBS, (job.name, resource, fields - KNOBS)


def test_no_job_has_a_webhook_anywhere_in_its_run_config(jobs: list) -> None:
    for job in jobs:
        snapshot = job.get_job_snapshot().config_schema_snapshot
        names = {
            field.name
            for snap in snapshot.all_config_snaps_by_key.values()
            for field in snap.fields or []
        }
        assert not {name for name in names if "webhook" in name.lower()}, job.name


def test_each_resource_says_which_variables_it_reads() -> None:
    resources = build_definitions().resources or {}
    expected = {
        "partners_api": (
            "FL_PARTNERS_URL",
            "FL_PARTNERS_CONSUMER_KEY",
            "FL_PARTNERS_CONSUMER_SECRET",
            "SYNC_ASSETS_HTTP_CACHE_URL",
        ),
        "platform_database": ("PLATFORM_DATABASE_URL",),
        "io_manager": ("SYNC_ASSETS_STORAGE_URL",),
        "op_io_manager": ("SYNC_ASSETS_STORAGE_URL",),
    }
    for name, variables in expected.items():
        description = resources[name].get_resource_definition().description or ""
        for variable in variables:
            assert variable in description, (name, variable)


def test_a_knob_filled_from_another_variable_never_repeats_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run config may write `{env: NAME}` for a str knob: the error must not show NAME's value."""
    monkeypatch.delenv("FL_PARTNERS_URL", raising=False)  # the embedded simulator's dataset
    monkeypatch.setenv("PLATFORM_DATABASE_URL", "postgresql://platform:a-db-password@db/platform")
    config = {"simulator_dataset": {"env": "PLATFORM_DATABASE_URL"}}
    with (
        dg.build_resources(
            {"partners_api": PartnersApi()}, resource_config={"partners_api": {"config": config}}
        ) as built,
        pytest.raises(ConfigurationError) as refused,
    ):
        built.partners_api.client()
    assert refused.value.setting == "PartnersApi.simulator_dataset"
    assert "a-db-password" not in str(refused.value)
