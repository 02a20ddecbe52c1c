"""Every definition of the code location explains itself in the UI: descriptions on assets,
checks, columns, jobs, schedules and sensors; kinds, owners, code references, freshness."""

from __future__ import annotations

import dagster as dg
import pytest

from sync_assets.definitions import build_definitions
from sync_assets.defs.sync.assets import configured, sync_assets_list
from sync_assets.platform.database import database_kind
from sync_assets.settings import platform_database_url


@pytest.fixture
def every_definition(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """The real code location, with the optional alert sensors defined too."""
    monkeypatch.setenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/T0-secret")
    monkeypatch.delenv("SYNC_ASSETS_GIT_URL", raising=False)
    monkeypatch.delenv("SYNC_ASSETS_GIT_BRANCH", raising=False)
    return build_definitions()


def test_every_definition_describes_itself(every_definition: dg.Definitions) -> None:
    defs = every_definition
    graph = defs.resolve_asset_graph()
    undescribed: list[str] = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        if not (node.description or "").strip():
            undescribed.append(f"asset {name}")
        schema = node.metadata.get("dagster/column_schema")
        if not isinstance(schema, dg.TableSchema) or not schema.columns:
            undescribed.append(f"asset {name}: no column schema")
        else:
            undescribed += [
                f"column {name}.{column.name}"
                for column in schema.columns
                if not (column.description or "").strip()
            ]
        for spec in node.assets_def.check_specs:
            if not (spec.description or "").strip():
                undescribed.append(f"check {spec.name}")
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]
    undescribed += [f"job {job.name}" for job in jobs if not (job.description or "").strip()]
    schedules = list(defs.schedules or [])
    sensors = list(defs.sensors or [])
    undescribed += [f"schedule {s.name}" for s in schedules if not (s.description or "").strip()]
    undescribed += [f"sensor {s.name}" for s in sensors if not (s.description or "").strip()]
    assert undescribed == []
    # What was walked is the whole location, not a part of it.
    assert len(graph.get_all_asset_keys()) == 5
    assert {job.name for job in jobs} == {
        "futurelearn_check",
        "futurelearn_sync",
        "certificate_job",
        "daily_certificates_job",
        "resync_learners_job",
        "explain_learner_job",
        "prune_run_history",
    }
    assert {s.name for s in schedules} == {
        "nightly_futurelearn_sync",
        "daily_certificates",
        "weekly_prune_run_history",
    }
    assert {s.name for s in sensors} == {
        "course_partitions_sensor",
        "changed_courses_sensor",
        "completion_events_sensor",
        "run_failure_alert_sensor",
        "tick_failure_alert_sensor",
        "queued_run_alert_sensor",
    }
    assert sum(len(graph.get(key).assets_def.check_specs) for key in graph.get_all_asset_keys())


def test_assets_have_kinds_owners_code_references_and_a_freshness_policy(
    every_definition: dg.Definitions,
) -> None:
    graph = every_definition.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert {"polars", "parquet"} <= set(node.kinds), key
        assert node.owners == ["team:learning-platform"], key
        [reference] = node.metadata["dagster/code_references"].code_references
        assert isinstance(reference, dg.LocalFileCodeReference)
        assert reference.file_path.endswith("sync_assets/defs/sync/assets.py")
    # Only the steps that read or write the platform database carry its kind.
    database = database_kind(platform_database_url())  # as the code location loaded
    with_database = {
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if database in graph.get(key).kinds
    }
    assert with_database == {"course_runs", "linked_memberships", "activity_progress"}
    # What it means is in test_freshness.py.
    assert graph.get(dg.AssetKey("activity_progress")).freshness_policy is not None


def test_the_database_kind_follows_the_configured_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read when the definitions are built, not when the module is imported."""

    def kinds_of(asset: str) -> set[str]:
        [built] = [a for a in configured(sync_assets_list) if a.key == dg.AssetKey(asset)]
        return set(built.specs_by_key[built.key].kinds)

    monkeypatch.setenv("PLATFORM_DATABASE_URL", "postgresql://sync@db.internal:5432/platform")
    assert kinds_of("activity_progress") == {"polars", "parquet", "postgres"}
    monkeypatch.setenv("PLATFORM_DATABASE_URL", "sqlite:////srv/platform.sqlite3")
    assert kinds_of("activity_progress") == {"polars", "parquet", "sqlite"}
    assert kinds_of("latest_enrolments") == {"polars", "parquet"}


def test_backfills_are_chunked_as_the_environment_says_when_definitions_are_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYNC_ASSETS_COURSES_PER_RUN", "7")
    policies = {a.key.to_user_string(): a.backfill_policy for a in configured(sync_assets_list)}
    assert policies.pop("course_runs") is None  # not partitioned
    assert set(policies.values()) == {dg.BackfillPolicy.multi_run(max_partitions_per_run=7)}
    monkeypatch.delenv("SYNC_ASSETS_COURSES_PER_RUN")
    policies = {a.key.to_user_string(): a.backfill_policy for a in configured(sync_assets_list)}
    assert policies["enrolments"] == dg.BackfillPolicy.single_run()


def test_code_references_link_to_the_repository_when_it_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYNC_ASSETS_GIT_URL", "https://github.com/example/sync_assets")
    monkeypatch.setenv("SYNC_ASSETS_GIT_BRANCH", "main")
    graph = build_definitions().resolve_asset_graph()
    [reference] = (
        graph.get(dg.AssetKey("activity_progress"))
        .metadata["dagster/code_references"]
        .code_references
    )
    assert isinstance(reference, dg.UrlCodeReference)
    assert reference.url.startswith(
        "https://github.com/example/sync_assets/tree/main/sync_assets/defs/sync/assets.py#L"
    )


def test_no_alert_sensor_without_a_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_ASSETS_ALERT_WEBHOOK_URL", raising=False)
    names = {sensor.name for sensor in build_definitions().sensors or []}
    assert "run_failure_alert_sensor" not in names
