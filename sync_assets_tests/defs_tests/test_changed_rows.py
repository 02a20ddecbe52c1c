"""Work per changed row (issue 33): a next day replans only the learners whose report rows
changed, and its result is a full recomputation's.

A course whose report changed since its last write, and whose platform side is as that write left
it, is planned for the learners with an added, changed or removed membership only; a platform-side
change on the course plans it whole again. The proof of equality is a full recomputation right
after (`--recompute-unchanged`, which replans every learner): it finds nothing left to do, and the
achievements are SPEC §4's, read independently.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
import sqlalchemy as sa

from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.simulator.datasets import STEPS_PER_WEEK, GeneratedDataset

from .conftest import World
from .test_skip_unchanged import _reset_achievement, _statuses
from .test_sync_end_to_end import expected_achievements, expected_owners


def _a_learner_to_move(world: World) -> tuple[str, str, str, str]:
    """An active enrolment of a linked learner, in progress, on a known course whose report has
    more than one linked learner: (membership, course, activity, user)."""
    activity_of = {c["future_learn_course_uuid"]: c["slug"] for c in load_catalogue()}
    owner = expected_owners(world.dataset)
    rows = world.dataset.enrolments.join(
        world.dataset.runs.select("run_uuid", "course_uuid"), on="run_uuid"
    ).filter(
        pl.col("course_uuid").is_in(list(activity_of))
        & pl.col("membership_uuid").is_in(list(owner))
    )
    learners = rows.group_by("course_uuid").agg(pl.col("membership_uuid").n_unique().alias("n"))
    busy = learners.filter(pl.col("n") > 2)["course_uuid"]
    chosen = (
        rows.filter(
            pl.col("course_uuid").is_in(busy.implode())
            & (pl.col("status") == "active")
            & pl.col("steps_completed_ratio").is_between(0.05, 0.4)
            & (pl.len().over("membership_uuid") == 1)  # one row: one run's report changes
        )
        .sort("membership_uuid")
        .row(0, named=True)
    )
    membership, course = chosen["membership_uuid"], chosen["course_uuid"]
    return membership, course, activity_of[course], owner[membership]


def _progress(dataset: GeneratedDataset, membership: str, steps: int) -> None:
    """FutureLearn's report says one membership completed `steps` more steps (its run's report,
    and so its ETag, changes with it); nothing else moves."""
    total = (
        dataset.enrolments.filter(pl.col("membership_uuid") == membership)
        .join(dataset.runs, on="run_uuid")
        .select(pl.col("weeks_count") * STEPS_PER_WEEK)
        .item()
    )
    this = pl.col("membership_uuid") == membership
    count = pl.min_horizontal(pl.col("steps_completed_count") + steps, total)
    dataset.enrolments = dataset.enrolments.with_columns(
        steps_completed_count=pl.when(this).then(count).otherwise("steps_completed_count"),
        steps_completed_ratio=pl.when(this).then(count / total).otherwise("steps_completed_ratio"),
    )
    run = dataset.enrolments.filter(this)["run_uuid"].item()
    dataset.versions[run] = dataset.versions.get(run, 0) + 1


def _planned(world: World, course: str) -> tuple[int, int]:
    """The course's last activity_progress partition: (learners, learners planned)."""
    with dg.DagsterInstance.get() as instance:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("activity_progress"), asset_partitions=[world.key(course)]
            ),
            limit=1,
        ).records
    metadata = record.asset_materialization.metadata
    return metadata["learners"].value, metadata["learners_planned"].value


def _recomputation_changes_nothing(world: World, course: str) -> None:
    settled = world.snapshot()
    full = world.sync("--recompute-unchanged")
    assert full.exit_code == 0, full.output
    assert "skipped as unchanged" not in full.output
    learners, planned = _planned(world, course)
    assert planned == learners  # a recomputation replans every learner, to check them all
    assert world.snapshot() == settled


def test_a_change_to_one_learner_replans_them_alone_a_platform_change_replans_the_course_whole(
    world: World,
) -> None:
    """Two next days of one world (each was a world and a first sync of its own): a change to one
    learner's report row, then, with a platform-side change on the course too, the whole course;
    each as a full recomputation would."""
    assert world.sync().exit_code == 0
    _a_next_day_change_to_one_learner_replans_them_alone(world)
    _a_platform_change_on_the_course_replans_it_whole(world)


def _a_next_day_change_to_one_learner_replans_them_alone(world: World) -> None:
    before = world.achievements()
    membership, course, activity, user = _a_learner_to_move(world)
    _progress(world.dataset, membership, steps=3)

    result = world.sync()

    assert result.exit_code == 0, result.output
    statuses = _statuses(result.output, world)
    assert statuses.pop(course) == "applied"
    assert set(statuses.values()) == {"unchanged"}
    learners, planned = _planned(world, course)
    assert learners > 2 and planned == 1  # the moved learner's group only
    after = world.achievements()
    assert after[(user, activity)] != before[(user, activity)]
    assert after == expected_achievements(world.dataset, before)
    _recomputation_changes_nothing(world, course)


def _a_platform_change_on_the_course_replans_it_whole(world: World) -> None:
    membership, course, activity, user = _a_learner_to_move(world)
    # An operator resets another learner's achievement on the same course, and the moved
    # learner's report row changes: the reset learner's rows did not, but their achievement is
    # no longer what the last write left, so the course is planned whole.
    with world.engine.connect() as connection:
        reset_user, progress = connection.execute(
            sa.text(
                "SELECT user_id, progress FROM achievements WHERE activity_id = :activity "
                "AND state = 'in_progress' AND user_id != :user ORDER BY user_id LIMIT 1"
            ),
            {"activity": activity, "user": user},
        ).one()
    before = world.achievements()
    with world.engine.begin() as connection:
        _reset_achievement(connection, reset_user, activity)
    _progress(world.dataset, membership, steps=3)

    result = world.sync()

    assert result.exit_code == 0, result.output
    learners, planned = _planned(world, course)
    assert planned == learners
    assert world.achievements()[(reset_user, activity)] == (progress, "in_progress")
    assert world.achievements() == expected_achievements(world.dataset, before)
    _recomputation_changes_nothing(world, course)
