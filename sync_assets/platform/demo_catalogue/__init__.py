"""The platform's real catalogue of FutureLearn courses, and the programmes built on it (SPEC §5).

`activities_catalogue.json` is the platform's catalogue of 33 FutureLearn courses as recorded.
The certificates need more than online courses: each certificate has four groupings that each
need one completion, and only "All courses" holds FutureLearn courses; the other groupings, and
the face-to-face credit CS Accelerator counts, are held by the platform-only activities below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_assets.platform.database import dialect_insert
from sync_assets.platform.tables import (
    achievements,
    activities,
    programme_activities,
    programme_activity_groupings,
    programmes,
    user_programme_enrolments,
    users,
)

CATALOGUE_FILE = Path(__file__).resolve().parent / "activities_catalogue.json"

PROGRAMMES = (
    {"id": "primary-certificate", "slug": "primary-certificate", "title": "Primary certificate"},
    {
        "id": "secondary-certificate",
        "slug": "secondary-certificate",
        "title": "Secondary certificate",
    },
    {
        "id": "cs-accelerator",
        "slug": "cs-accelerator",
        "title": "Computer Science Accelerator",
    },
)
CERTIFICATE_PROGRAMMES = ("primary-certificate", "secondary-certificate")
ALL_COURSES = "All courses"
CERTIFICATE_GROUPINGS = (ALL_COURSES, "Face-to-face course", "Community activity", "Assessment")


def _platform_activity(activity_id: str, title: str, category: str, credit: float | None) -> dict:
    return {
        "id": activity_id,
        "title": title,
        "credit": credit,
        "category": category,
        "provider": "stem-learning",
        "future_learn_course_uuid": None,
        "slug": activity_id,
        "stem_activity_code": None,
    }


# (activity, programme, grouping title or None)
PLATFORM_ACTIVITIES: tuple[tuple[dict, str, str | None], ...] = tuple(
    (
        _platform_activity(f"{programme}-{kind}", f"{label} ({programme})", category, credit),
        programme,
        grouping,
    )
    for programme in CERTIFICATE_PROGRAMMES
    for kind, label, category, credit, grouping in (
        ("face-to-face-course", "Face-to-face course", "face-to-face", 10.0, "Face-to-face course"),
        ("community-activity", "Community activity", "community", None, "Community activity"),
        ("assessment", "Certificate assessment", "assessment", None, "Assessment"),
    )
) + tuple(
    (
        _platform_activity(
            f"cs-accelerator-face-to-face-{number}",
            f"CS Accelerator face-to-face course {number}",
            "face-to-face",
            10.0,
        ),
        "cs-accelerator",
        None,
    )
    for number in (1, 2)
)


def load_catalogue() -> list[dict[str, Any]]:
    return json.loads(CATALOGUE_FILE.read_text())


def _future_learn_activity(course: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": course["slug"],
        "title": course["title"],
        "credit": course["credit"],
        "category": course["category"],
        "provider": course["provider"],
        "future_learn_course_uuid": course["future_learn_course_uuid"],
        "slug": course["slug"],
        "stem_activity_code": course["stem_activity_code"],
    }


def _upsert(connection: Connection, table: sa.Table, rows: list[dict], keys: list[str]) -> None:
    statement = dialect_insert(connection, table)
    updates = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    connection.execute(
        statement.on_conflict_do_update(index_elements=keys, set_=updates)
        if updates
        else statement.on_conflict_do_nothing(index_elements=keys),
        rows,
    )


@dataclass(frozen=True)
class SeededCatalogue:
    activities: int
    future_learn_courses: int
    programmes: int
    groupings: int
    programme_activities: int


def seed_demo_catalogue(connection: Connection) -> SeededCatalogue:
    """Load the catalogue, programmes and groupings; running it again changes nothing."""
    catalogue = load_catalogue()
    course_rows = [_future_learn_activity(course) for course in catalogue]
    activity_rows = course_rows + [activity for activity, _, _ in PLATFORM_ACTIVITIES]
    _upsert(connection, activities, activity_rows, ["id"])
    _upsert(connection, programmes, list(PROGRAMMES), ["id"])

    grouping_rows = [
        {"programme_id": programme, "title": title, "required_for_completion": 1, "sort_key": key}
        for programme in CERTIFICATE_PROGRAMMES
        for key, title in enumerate(CERTIFICATE_GROUPINGS, start=1)
    ]
    _upsert(connection, programme_activity_groupings, grouping_rows, ["programme_id", "title"])
    grouping_ids = {
        (programme, title): grouping_id
        for grouping_id, programme, title in connection.execute(
            sa.select(
                programme_activity_groupings.c.id,
                programme_activity_groupings.c.programme_id,
                programme_activity_groupings.c.title,
            )
        )
    }

    def membership(activity_id: str, programme: str, grouping: str | None) -> dict:
        return {
            "programme_id": programme,
            "activity_id": activity_id,
            "programme_activity_grouping_id": grouping_ids.get((programme, grouping)),
        }

    links = [
        membership(
            course["slug"], programme, ALL_COURSES if programme in CERTIFICATE_PROGRAMMES else None
        )
        for course in catalogue
        for programme in course["programmes"]
    ] + [
        membership(activity["id"], programme, group)
        for activity, programme, group in PLATFORM_ACTIVITIES
    ]
    _upsert(connection, programme_activities, links, ["programme_id", "activity_id"])
    return SeededCatalogue(
        activities=len(activity_rows),
        future_learn_courses=len(course_rows),
        programmes=len(PROGRAMMES),
        groupings=len(grouping_rows),
        programme_activities=len(links),
    )


def seed_users(connection: Connection, people: pl.DataFrame) -> int:
    """Platform users (id, email, forgotten), as the demo and benchmark datasets provide them."""
    if people.is_empty():
        return 0
    rows = people.select("id", "email", "forgotten").to_dicts()
    for start in range(0, len(rows), 10_000):
        _upsert(connection, users, rows[start : start + 10_000], ["id"])
    return len(rows)


def seed_activities(connection: Connection, extra: pl.DataFrame) -> int:
    """Activities for FutureLearn courses outside the catalogue (benchmark datasets' courses)."""
    if extra.is_empty():
        return 0
    _upsert(connection, activities, extra.to_dicts(), ["id"])
    return extra.height


def seed_demo_progress(connection: Connection, people: pl.DataFrame, share: float = 0.3) -> int:
    """Platform-side progress for some demo users, so the certificates have something to do.

    Every third user in `share` is enrolled on a certificate programme with its face-to-face,
    community and assessment groupings complete, or has CS Accelerator face-to-face credit; the
    FutureLearn course completions the sync brings then complete their requirements. The choice
    is by position, so the demo is the same every time.
    """
    chosen = people.filter(~pl.col("forgotten")).head(int(people.height * share))["id"].to_list()
    enrolments, completed = [], []
    for index, user in enumerate(chosen):
        programme = ("primary-certificate", "secondary-certificate", "cs-accelerator")[index % 3]
        platform_activities = [
            activity["id"] for activity, owner, _ in PLATFORM_ACTIVITIES if owner == programme
        ]
        enrolments.append({"user_id": user, "programme_id": programme, "state": "enrolled"})
        completed += [
            {
                "user_id": user,
                "activity_id": activity,
                "programme_id": programme,
                "progress": 100,
                "state": "complete",
            }
            for activity in platform_activities
        ]
    if enrolments:
        _upsert(connection, user_programme_enrolments, enrolments, ["user_id", "programme_id"])
        _upsert(connection, achievements, completed, ["user_id", "activity_id"])
    return len(enrolments)
