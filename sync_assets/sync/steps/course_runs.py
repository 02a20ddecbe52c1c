"""Step zero (R1): every course run FutureLearn lists, marked known or not by the platform."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl
from sqlalchemy.engine import Engine

from sync_assets.partners_api import contract
from sync_assets.partners_api.client import (
    PartnersApiClient,
)
from sync_assets.platform import sync_store
from sync_assets.sync.steps.changes import CHECK_SCHEMA, unchecked

COURSE_RUNS_SCHEMA = {
    **contract.COURSE_RUN_SCHEMA,
    "known": pl.Boolean,
    "activity_id": pl.String,
    **CHECK_SCHEMA,  # each run's report as the night's check was served it (steps/changes.py)
}


@dataclass(frozen=True)
class CourseRuns:
    runs: pl.DataFrame  # COURSE_RUNS_SCHEMA: every run, with whether its course is known
    quarantine: pl.DataFrame
    not_modified: bool
    # Every course the platform knows (R1), listed or not: uuid → its activity's title.
    known: dict[str, str] = field(default_factory=dict)

    def known_course_uuids(self) -> list[str]:
        """The known courses FutureLearn lists runs of."""
        return sorted(set(self.runs.filter("known")["course_uuid"]))

    def withdrawn(self) -> dict[str, str]:
        """R1: the known courses FutureLearn lists no runs for, with their activities' titles."""
        listed = set(self.runs["course_uuid"])
        return {uuid: title for uuid, title in sorted(self.known.items()) if uuid not in listed}

    def unknown_courses(self, ignored: Iterable[str] = ()) -> pl.DataFrame:
        """R1: each unknown course with the title of its first run, less the ignored ones."""
        return (
            self.runs.filter(~pl.col("known") & ~pl.col("course_uuid").is_in(list(ignored)))
            .sort("start_time", "run_uuid")
            .group_by("course_uuid", maintain_order=True)
            .agg(pl.col("title").first())
            .sort("course_uuid")
        )


def course_titles(runs: pl.DataFrame) -> dict[str, str]:
    """Each course's title as its latest run calls it: what the course is called now."""
    return dict(
        runs.sort("start_time", "run_uuid", descending=True, nulls_last=True)
        .group_by("course_uuid", maintain_order=True)
        .agg(pl.col("title").first())
        .iter_rows()
    )


async def fetch_course_runs(client: PartnersApiClient, engine: Engine) -> CourseRuns:
    fetched = await client.course_runs()
    with engine.connect() as connection:
        known = sync_store.known_courses(connection)
    runs = (
        fetched.records.join(
            known.select("course_uuid", "activity_id"), on="course_uuid", how="left"
        )
        .with_columns(known=pl.col("activity_id").is_not_null())
        .pipe(unchecked)
        .select(list(COURSE_RUNS_SCHEMA))
    )
    return CourseRuns(runs, fetched.quarantine, fetched.not_modified, known_titles(known))


def known_titles(known: pl.DataFrame) -> dict[str, str]:
    """Each known course (R1) and its activity's title (what a withdrawn course is called)."""
    return {uuid: title or "" for uuid, title in known.select("course_uuid", "title").iter_rows()}


def known_courses(engine: Engine) -> dict[str, str]:
    """Every course the platform knows (R1), listed by FutureLearn or not, and its title."""
    with engine.connect() as connection:
        return known_titles(sync_store.known_courses(connection))


def activities_of(runs: pl.DataFrame) -> dict[str, str]:
    """Each known course's platform activity (R1)."""
    return dict(runs.filter("known").select("course_uuid", "activity_id").unique().iter_rows())
