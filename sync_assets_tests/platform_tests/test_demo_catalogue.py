"""The demo catalogue: the platform's 33 FutureLearn courses and SPEC §5's programmes."""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_assets.platform import sync_store
from sync_assets.platform.demo_catalogue import (
    ALL_COURSES,
    load_catalogue,
    seed_demo_catalogue,
)
from sync_assets.platform.tables import activities, programme_activities


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (
                "activities",
                "programmes",
                "programme_activity_groupings",
                "programme_activities",
            )
        }


def test_seeding_twice_changes_nothing(platform_engine: Engine) -> None:
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
    first = _counts(platform_engine)
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
    assert _counts(platform_engine) == first
    assert first["programmes"] == 3


def test_every_catalogue_course_is_known_with_its_programmes(platform_engine: Engine) -> None:
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
        known = sync_store.known_courses(connection)
        programmes = sync_store.activity_programmes(connection, known["activity_id"])
        credits = dict(
            connection.execute(
                sa.select(activities.c.future_learn_course_uuid, activities.c.credit)
            ).all()
        )
    catalogue = load_catalogue()
    assert sorted(known["course_uuid"]) == sorted(c["future_learn_course_uuid"] for c in catalogue)
    by_activity = programmes.group_by("activity_id").agg(pl.col("programme_slug").sort())
    listed = dict(by_activity.iter_rows())
    for course in catalogue:
        assert listed[course["slug"]] == sorted(course["programmes"])
        assert credits[course["future_learn_course_uuid"]] == course["credit"]


def test_certificates_have_four_groupings_and_only_all_courses_holds_futurelearn(
    platform_engine: Engine,
) -> None:
    with platform_engine.begin() as connection:
        seed_demo_catalogue(connection)
        structure = sync_store.programme_structure(connection)
        future_learn = set(
            connection.execute(
                sa.select(activities.c.id).where(activities.c.provider == "future-learn")
            ).scalars()
        )
        csa_groupings = (
            connection.execute(
                sa.select(programme_activities.c.programme_activity_grouping_id)
                .where(programme_activities.c.programme_id == "cs-accelerator")
                .distinct()
            )
            .scalars()
            .all()
        )
    for programme in ("primary-certificate", "secondary-certificate"):
        rows = structure.filter(pl.col("programme_slug") == programme)
        groupings = rows.group_by("grouping_title").agg(
            pl.col("required_for_completion").first(), pl.col("activity_id")
        )
        assert groupings.height == 4
        assert groupings["required_for_completion"].to_list() == [1, 1, 1, 1]
        for title, _, members in groupings.iter_rows():
            in_future_learn = {a in future_learn for a in members}
            # Every grouping can be met; only "All courses" holds FutureLearn courses.
            assert in_future_learn == ({True} if title == ALL_COURSES else {False})
    assert csa_groupings == [None]
    csa = structure.filter(pl.col("programme_slug") == "cs-accelerator")
    assert csa.filter(pl.col("category") == "face-to-face")["credit"].sum() >= 20
