"""S2: resync chosen learners of one course now, through the scheduled sync's own steps.

Only the chosen learners' links, achievements and completion events change. Memberships of other
learners that had to be fetched to find out whose they are are kept as fetched and unlinked (no
one else's link changes, and R2's "once ever" holds: the nightly sync matches them locally).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_assets.partners_api.client import PartnersApiClient
from sync_assets.platform.tables import activities, future_learn_memberships, users
from sync_assets.sync import steps
from sync_assets.sync.outcomes import Failed

UPDATED, UNCHANGED, NOT_LINKED, NOT_ENROLLED = "updated", "unchanged", "not linked", "not enrolled"
USER_ID = re.compile(r"^\S{1,255}$")


class ResyncError(Exception):
    """A resync that cannot be done. Its message may name some of the users given, at the
    placeholder `{users}`: `str()` names them as given (the operator's terminal), `describe`
    as the caller says (by pseudonym wherever the text is kept: the Dagster event log)."""

    def __init__(self, message: str, users: Iterable[str] = ()) -> None:
        self.message = message
        self.users = tuple(users)
        super().__init__(self.describe(repr))

    def describe(self, name: Callable[[str], str]) -> str:
        if not self.users:
            return self.message
        return self.message.replace("{users}", "[" + ", ".join(map(name, self.users)) + "]")


class ResyncRequestError(ResyncError, ValueError):
    """A request that cannot be served; raised before any Partners API request."""


class NoEnrolmentsError(ResyncError, RuntimeError):
    pass


class ResyncFailed(ResyncError, RuntimeError):
    """The Partners API failed the course for good (after every retry)."""


@dataclass
class ResyncResult:
    course_uuid: str
    outcomes: dict[str, str] = field(default_factory=dict)  # user id → outcome
    outcome: steps.CourseWrite | None = None


def validate_request(engine: Engine, course_uuid: str, user_ids: list[str]) -> str:
    """The course's activity id, or a clear error: checked against the database only."""
    try:
        uuid.UUID(course_uuid)
    except ValueError:
        raise ResyncRequestError(f"course {course_uuid!r} is not a UUID") from None
    if not user_ids:
        raise ResyncRequestError("give at least one platform user id")
    malformed = [user for user in user_ids if not USER_ID.match(user)]
    if malformed:
        raise ResyncRequestError(
            "malformed user ids {users}: expected 1-255 characters, no spaces", malformed
        )
    with engine.connect() as connection:
        activity_id = connection.execute(
            sa.select(activities.c.id).where(activities.c.future_learn_course_uuid == course_uuid)
        ).scalar_one_or_none()
        known = set(
            connection.execute(sa.select(users.c.id).where(users.c.id.in_(user_ids))).scalars()
        )
    if activity_id is None:
        raise ResyncRequestError(
            f"course {course_uuid} is not a known course: no activity has it (R1)"
        )
    unknown = sorted(set(user_ids) - known)
    if unknown:
        raise ResyncRequestError("no platform users with ids {users}", unknown)
    return activity_id


def _linked_anywhere(engine: Engine, user_ids: list[str]) -> set[str]:
    table = future_learn_memberships
    with engine.connect() as connection:
        return set(
            connection.execute(
                sa.select(table.c.user_id)
                .join(users, users.c.id == table.c.user_id)
                .where(table.c.user_id.in_(user_ids), users.c.forgotten.is_(False))
                .distinct()
            ).scalars()
        )


async def resync_learners(
    client: PartnersApiClient,
    engine: Engine,
    course_uuid: str,
    user_ids: list[str],
    *,
    now: datetime,
    dagster_run_id: str | None,
) -> ResyncResult:
    chosen = list(dict.fromkeys(user_ids))
    activity_id = validate_request(engine, course_uuid, chosen)
    runs = await steps.fetch_course_runs(client, engine)
    fetched = await steps.fetch_enrolments(client, runs.runs, [course_uuid])
    failure = fetched.failure(course_uuid)
    if failure:
        raise ResyncFailed(f"course {course_uuid}: {failure}")
    enrolments = fetched.frames()[course_uuid]
    linked_by_course, _ = await steps.link_memberships(
        client, engine, {course_uuid: enrolments}, now
    )
    linking = linked_by_course[course_uuid]
    if isinstance(linking, Failed):
        raise ResyncFailed(f"course {course_uuid}: {linking.reason}")
    is_chosen = pl.col("user_id").is_in(chosen)
    others = pl.col("write") & ~is_chosen
    linked = linking.frame.with_columns(
        user_id=pl.when(others).then(None).otherwise("user_id"),
        linked_at=pl.when(others).then(None).otherwise("linked_at"),
        new_link=pl.col("new_link") & is_chosen,
    )
    latest = steps.choose_latest(course_uuid, enrolments, linked, runs.runs).filter(is_chosen)
    if latest.is_empty():
        raise NoEnrolmentsError(
            f"Could not find any enrolments for users {{users}} on course {course_uuid}", chosen
        )
    outcome = steps.sync_course(
        engine,
        steps.CourseInputs(course_uuid, activity_id, enrolments, latest, linked),
        steps.WriteOptions(now, dagster_run_id=dagster_run_id, record_course_state=False),
    )
    changed = set(outcome.changes["user_id"])
    enrolled = set(latest["user_id"])
    linked_users = _linked_anywhere(engine, chosen)
    result = ResyncResult(course_uuid, outcome=outcome)
    for user in chosen:
        if user in changed:
            result.outcomes[user] = UPDATED
        elif user in enrolled:
            result.outcomes[user] = UNCHANGED
        elif user in linked_users:
            result.outcomes[user] = NOT_ENROLLED
        else:
            result.outcomes[user] = NOT_LINKED
    return result
