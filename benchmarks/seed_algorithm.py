"""COMPARISON BASELINE — NOT PRODUCT CODE.

The original TeachComputing integration as `shared/seeds/000_…` describes it, compactly, so the
harness can run it against the same simulator and database as the product:

- two passes over the API (link memberships; then update progress), with a response cache
  between them standing in for the Rails cache;
- one membership request for every unlinked membership on every sync (nothing remembers a
  membership that matched no one);
- one unit of work per learner (a Sidekiq job), writing its rows one at a time and committing.

Jobs run on a thread pool as wide as the product's client concurrency, like Sidekiq workers.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import sqlalchemy as sa

from sync_assets.partners_api.auth import PartnersJwtAuth
from sync_assets.platform.database import create_platform_engine

ALLOWED = {
    "enrolled": {"in_progress", "complete", "dropped"},
    "in_progress": {"complete", "dropped"},
    "dropped": {"enrolled", "in_progress", "complete"},
    "complete": set(),
}


class SeedIntegration:
    def __init__(
        self, base_url: str, key: str, secret: str, database_url: str, workers: int
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            auth=PartnersJwtAuth(key, secret),
            timeout=60,
            limits=httpx.Limits(max_connections=workers * 2),
        )
        self.engine = create_platform_engine(database_url)
        self.workers = workers
        self.cache: dict[str, object] = {}
        self.statements = 0
        sa.event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, *_args: object) -> None:
        self.statements += 1

    def get(self, path: str, cached: bool = True) -> object:
        if cached and path in self.cache:
            return self.cache[path]
        response = self.http.get(path)
        body = None if response.status_code == 404 else response.json()
        if cached:
            self.cache[path] = body
        return body

    def known_courses(self) -> dict[str, str]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT future_learn_course_uuid, id FROM activities WHERE future_learn_course_uuid IS NOT NULL"
                )
            )
            return dict(rows.all())

    def reports(self, known: dict[str, str]) -> dict[str, list[dict]]:
        runs = self.get("/partners/course_runs")
        by_course: dict[str, list[dict]] = defaultdict(list)
        for run in runs:
            if run["course"]["uuid"] in known:
                report = self.get(f"/partners/course_runs/{run['uuid']}/course_enrolments_report")
                by_course[run["course"]["uuid"]] += [
                    {**e, "start_time": run["start_time"]} for e in report
                ]
        return by_course

    # Pass 1: UpdateOrganisationMembershipsJob → UserInformationJob per unlinked membership.
    def link_memberships(self, known: dict[str, str]) -> None:
        memberships = {
            e["organisation_membership"]["uuid"]
            for report in self.reports(known).values()
            for e in report
        }
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(self.user_information_job, sorted(memberships)))

    def user_information_job(self, membership_uuid: str) -> None:
        with self.engine.begin() as connection:
            linked = connection.execute(
                sa.text(
                    "SELECT 1 FROM future_learn_memberships WHERE membership_uuid = :m AND user_id IS NOT NULL"
                ),
                {"m": membership_uuid},
            ).first()
        if linked:
            return
        membership = self.get(f"/partners/organisation_memberships/{membership_uuid}", cached=False)
        if membership is None:
            return
        external = membership["external_learner_id"]
        with self.engine.begin() as connection:
            user = (
                connection.execute(
                    sa.text("SELECT id FROM users WHERE id = :x AND NOT forgotten"), {"x": external}
                ).scalar()
                or connection.execute(
                    sa.text(
                        "SELECT id FROM users WHERE lower(email) = lower(:x) AND NOT forgotten"
                    ),
                    {"x": external},
                ).scalar()
            )
            if user:
                connection.execute(
                    sa.text(
                        "INSERT INTO future_learn_memberships (membership_uuid, user_id, external_learner_id, linked_at)"
                        " VALUES (:m, :u, :x, :t)"
                    ),
                    {"m": membership_uuid, "u": user, "x": external, "t": datetime.now(UTC)},
                )

    # Pass 2: CourseRunsJob → CourseEnrolmentsJob → UpdateUserActivityJob per learner.
    def update_progress(self, known: dict[str, str]) -> None:
        for course, report in self.reports(known).items():
            by_user: dict[str, list[dict]] = defaultdict(list)
            with self.engine.connect() as connection:
                for enrolment in report:
                    user = connection.execute(
                        sa.text(
                            "SELECT user_id FROM future_learn_memberships WHERE membership_uuid = :m"
                        ),
                        {"m": enrolment["organisation_membership"]["uuid"]},
                    ).scalar()
                    if user:
                        by_user[user].append(enrolment)
            latest = {
                user: max(
                    rows,
                    key=lambda e: (e["activated_at"], e["steps_completed_ratio"], e["start_time"]),
                )
                for user, rows in by_user.items()
            }
            activity = known[course]
            jobs = [(activity, user, enrolment) for user, enrolment in latest.items()]
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(lambda job: self.update_user_activity_job(*job), jobs))

    def update_user_activity_job(self, activity: str, user: str, enrolment: dict) -> None:
        progress = math.floor(enrolment["steps_completed_ratio"] * 100)
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.text(
                    "SELECT id, state, progress FROM achievements WHERE user_id = :u AND activity_id = :a"
                ),
                {"u": user, "a": activity},
            ).first()
            if row is None:
                connection.execute(
                    sa.text("INSERT INTO achievements (user_id, activity_id) VALUES (:u, :a)"),
                    {"u": user, "a": activity},
                )
                row = connection.execute(
                    sa.text(
                        "SELECT id, state, progress FROM achievements WHERE user_id = :u AND activity_id = :a"
                    ),
                    {"u": user, "a": activity},
                ).first()
            achievement, state, stored = row
            if state == "complete":
                return
            if enrolment["deactivated_at"] and progress < 60:
                target = "dropped"
            else:
                target = (
                    "enrolled" if progress == 0 else "in_progress" if progress < 60 else "complete"
                )
            new_state = target if target in ALLOWED[state] else state
            connection.execute(
                sa.text(
                    "UPDATE achievements SET progress = :p, state = :s, updated_at = :t WHERE id = :id"
                ),
                {
                    "p": max(progress, stored),
                    "s": new_state,
                    "t": datetime.now(UTC),
                    "id": achievement,
                },
            )
            if new_state != state:
                connection.execute(
                    sa.text(
                        "INSERT INTO achievement_transitions (achievement_id, from_state, to_state) VALUES (:id, :f, :t)"
                    ),
                    {"id": achievement, "f": state, "t": new_state},
                )

    def sync(self) -> dict[str, float]:
        started = time.perf_counter()
        self.cache.clear()
        known = self.known_courses()
        self.link_memberships(known)
        self.update_progress(known)
        return {"seconds": time.perf_counter() - started, "sql_statements": self.statements}
