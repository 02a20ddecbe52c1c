"""The Dagster internals the course-step adapter relies on, each pinned on a tiny job of its own.

One test per behaviour named in defs/sync/course_step.py's docstring (checked on Dagster 1.13.27):
a Dagster upgrade that changes one fails the test named for it, not a night.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at runtime.
from typing import Any

import dagster as dg

from sync_assets.defs.sync.course_step import (
    _runs_a_later_step,
    add_partition_metadata,
    record_failed_partitions,
)

COURSES = dg.StaticPartitionsDefinition(["course-a", "course-b", "course-c"])
EVERY_COURSE = {
    "dagster/asset_partition_range_start": "course-a",
    "dagster/asset_partition_range_end": "course-c",
}


class _Discard(dg.ConfigurableIOManager):
    """Stores nothing: these tests are about events, not values."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        return None

    def load_input(self, context: dg.InputContext) -> Any:
        return None


def _materialize(assets: list[dg.AssetsDefinition], **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, resources={"io_manager": _Discard()}, raise_on_error=False, **kwargs
    )


def test_metadata_added_per_partition_lands_on_that_partitions_materialisation() -> None:
    """Relies on `context.op_execution_context._step_execution_context._metadata_accumulator`
    (`with_additional_asset_metadata`): what Dagster's `add_asset_metadata` feeds."""

    @dg.asset(partitions_def=COURSES)
    def per_course(context: dg.AssetExecutionContext):
        for key in context.partition_keys:
            add_partition_metadata(context, {"course_seen": key}, key)
        yield dg.Output(None)

    result = _materialize([per_course], tags=EVERY_COURSE)

    assert result.success
    materialised = {
        event.partition: event.metadata["course_seen"].value
        for event in result.asset_materializations_for_node("per_course")
    }
    assert materialised == {key: key for key in COURSES.get_partition_keys()}


def test_metadata_for_a_partition_the_step_does_not_target_is_refused() -> None:
    @dg.asset(partitions_def=COURSES)
    def one_course(context: dg.AssetExecutionContext):
        add_partition_metadata(context, {"x": 1}, "course-c")
        yield dg.Output(None)

    result = _materialize([one_course], partition_key="course-a")

    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    assert "partition key 'course-c' that is not being targeted" in error.to_string()


def test_partitions_reported_failed_after_the_output_count_as_failed() -> None:
    """Relies on `DagsterEvent.build_asset_materialization_planned_event` (dagster._core): a
    planned materialisation reported after the step stored every partition, with none after it,
    makes that partition FAILED in Dagster's partition status once the run fails (as the sync's
    last step fails it). The failure event beside it (with the reason) is dropped by the
    open-source event log storages (`can_store_asset_failure_events` is False): the reason
    reaches the UI through the partition's metadata instead."""

    @dg.asset(partitions_def=COURSES)
    def some_fail(context: dg.AssetExecutionContext):
        yield dg.Output(None)
        record_failed_partitions(context, {"course-b": "b broke"}, {"course-c": "upstream"})
        raise dg.Failure("2 course(s) not synced")

    with dg.instance_for_test() as instance:
        result = _materialize([some_fail], tags=EVERY_COURSE, instance=instance)
        status = instance.get_status_by_partition(
            dg.AssetKey("some_fail"), COURSES.get_partition_keys(), COURSES
        )
        events = [
            entry.dagster_event
            for entry in instance.all_logs(result.run_id)
            if entry.dagster_event is not None
        ]
        stores_failures = instance.event_log_storage.can_store_asset_failure_events

    assert not result.success
    assert {key: value.value if value else None for key, value in (status or {}).items()} == {
        "course-a": "MATERIALIZED",
        "course-b": "FAILED",
        "course-c": "FAILED",
    }
    last_materialised = max(i for i, e in enumerate(events) if e.is_step_materialization)
    planned_after = [
        event.event_specific_data.partition
        for event in events[last_materialised:]
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ]
    assert sorted(planned_after) == ["course-b", "course-c"]
    assert stores_failures is False  # if this changes, the reasons reach the event log too


def test_a_step_knows_whether_its_run_executes_a_later_step() -> None:
    """Relies on `context.job_def.asset_layer` (`get(key).child_keys`, `has`,
    `selected_asset_keys`): the asset graph of the run's job, subset to what the run selects."""
    seen: dict[str, bool] = {}

    @dg.asset
    def first(context: dg.AssetExecutionContext) -> None:
        seen["first"] = _runs_a_later_step(context)

    @dg.asset(deps=[first])
    def second(context: dg.AssetExecutionContext) -> None:
        seen["second"] = _runs_a_later_step(context)

    assert _materialize([first, second]).success
    assert seen == {"first": True, "second": False}

    seen.clear()
    assert _materialize([first, second], selection=[first]).success
    assert seen == {"first": False}
