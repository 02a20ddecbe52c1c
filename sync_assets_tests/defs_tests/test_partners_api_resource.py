"""The PartnersApi resource: environment-only credentials, the embedded simulator by default."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from sync_assets.defs.resources import PartnersApi
from sync_assets.partners_api.client import run
from sync_assets.settings import ConfigurationError, partners_api_settings
from sync_assets.simulator.app import PartnersApiSimulator
from sync_assets.simulator.datasets import generate
from sync_assets.simulator.transports import serving

FL_VARIABLES = (
    "FL_PARTNERS_URL",
    "FL_PARTNERS_CONSUMER_KEY",
    "FL_PARTNERS_CONSUMER_SECRET",
    "FL_PARTNERS_IGNORED_COURSE_UUIDS",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@dg.asset
def course_run_count(partners_api: PartnersApi) -> dg.MaterializeResult:
    async def fetch():
        async with partners_api.client() as client:
            return await client.course_runs(), client.metrics

    runs, metrics = run(fetch())
    return dg.MaterializeResult(
        metadata={"runs": runs.records.height, "simulated": partners_api.uses_simulator()}
        | {"requests": metrics.total_requests}
    )


def _materialise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("SYNC_ASSETS_HTTP_CACHE_URL", str(tmp_path / "cache.sqlite3"))
    resource = PartnersApi()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [course_run_count], instance=instance, resources={"partners_api": resource}
        )
        assert result.success
        metadata = result.asset_materializations_for_node("course_run_count")[0].metadata
        return {name: value.value for name, value in metadata.items()}


def test_without_a_url_the_embedded_simulator_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = _materialise(tmp_path, monkeypatch)
    assert metadata == {"runs": generate("demo").runs.height, "simulated": True, "requests": 1}


def test_with_a_url_the_real_http_path_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = PartnersApiSimulator(
        generate("demo", seed=5),
        consumer_key="k",
        consumer_secret="s3cret-of-thirty-two-bytes-or-more",
    )
    with serving(simulator) as server:
        monkeypatch.setenv("FL_PARTNERS_URL", server.base_url)
        monkeypatch.setenv("FL_PARTNERS_CONSUMER_KEY", "k")
        monkeypatch.setenv("FL_PARTNERS_CONSUMER_SECRET", "s3cret-of-thirty-two-bytes-or-more")
        metadata = _materialise(tmp_path, monkeypatch)
    assert metadata["simulated"] is False and metadata["runs"] == simulator.dataset.runs.height
    assert simulator.requests("course_runs", 200) == 1


def test_credentials_never_reach_config_or_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_PARTNERS_URL", "https://api.example.org")
    monkeypatch.setenv("FL_PARTNERS_CONSUMER_KEY", "k")
    monkeypatch.setenv("FL_PARTNERS_CONSUMER_SECRET", "s3cret-of-thirty-two-bytes-or-more")
    resource = PartnersApi()
    assert "s3cret-of-thirty-two-bytes-or-more" not in repr(
        resource
    ) and "s3cret-of-thirty-two-bytes-or-more" not in str(resource.model_dump())
    assert "s3cret-of-thirty-two-bytes-or-more" not in repr(
        resource.client_settings()
    ) and "s3cret-of-thirty-two-bytes-or-more" not in repr(partners_api_settings())


@pytest.mark.parametrize(
    ("variables", "setting"),
    [
        ({"FL_PARTNERS_URL": "api.example.org"}, "FL_PARTNERS_URL"),
        ({"FL_PARTNERS_URL": "https://api.example.org"}, "FL_PARTNERS_CONSUMER_KEY"),
        (
            {"FL_PARTNERS_URL": "https://api.example.org", "FL_PARTNERS_CONSUMER_KEY": "k"},
            "FL_PARTNERS_CONSUMER_SECRET",
        ),
    ],
)
def test_incomplete_configuration_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, variables: dict, setting: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as error:
        partners_api_settings()
    assert error.value.setting == setting


def test_ignored_courses_are_read_as_a_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_PARTNERS_IGNORED_COURSE_UUIDS", " a-1, b-2 ,,a-1 ")
    assert PartnersApi().ignored_course_uuids() == frozenset({"a-1", "b-2"})


def test_the_retry_backoff_is_half_a_second_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """FL_PARTNERS_BACKOFF_SECONDS reaches the client (tests that fail every attempt shorten it);
    unset, production keeps its half-second unit; zero is refused, naming the setting."""
    monkeypatch.delenv("FL_PARTNERS_BACKOFF_SECONDS", raising=False)
    assert PartnersApi().client_settings().backoff_seconds == 0.5
    monkeypatch.setenv("FL_PARTNERS_BACKOFF_SECONDS", "0.01")
    assert PartnersApi().client_settings().backoff_seconds == 0.01
    monkeypatch.setenv("FL_PARTNERS_BACKOFF_SECONDS", "0")
    with pytest.raises(ConfigurationError) as error:
        PartnersApi().client_settings()
    assert error.value.setting == "FL_PARTNERS_BACKOFF_SECONDS"
