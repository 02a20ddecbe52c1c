"""What the simulator serves: the recorded sandbox, or data generated from a seed.

Generated datasets are built with numpy and polars, a whole column at a time, so even `large`
(2M enrolments, 1M learners) takes seconds. They come with the platform side needed to use them:
the users to seed (so that memberships link) and, for courses outside the demo catalogue, the
activities that make them known.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl

from sync_assets.partners_api.contract import UTC_TIME
from sync_assets.platform.demo_catalogue import load_catalogue

SANDBOX_DIR = Path(__file__).resolve().parent / "sandbox"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
DAY_US = 86_400_000_000
STEPS_PER_WEEK = 9


@dataclass(frozen=True)
class Scale:
    known_courses: int
    unknown_courses: int
    runs: int
    learners: int
    enrolments: int


SCALES = {
    # For tests: every feature of demo, in a few courses.
    "tiny": Scale(known_courses=5, unknown_courses=2, runs=14, learners=90, enrolments=200),
    # The real API showed 31 courses with runs, 6 of them unknown to the platform.
    "demo": Scale(known_courses=25, unknown_courses=6, runs=90, learners=400, enrolments=900),
    "teachcomputing": Scale(
        known_courses=27, unknown_courses=6, runs=130, learners=60_000, enrolments=100_000
    ),
    "large": Scale(
        known_courses=980, unknown_courses=20, runs=4_000, learners=1_000_000, enrolments=2_000_000
    ),
    # 10× large, generated a course (and a block of users) at a time: see streamed.py.
    "huge": Scale(
        known_courses=9_800,
        unknown_courses=200,
        runs=40_000,
        learners=10_000_000,
        enrolments=20_000_000,
    ),
}
STREAMED = ("huge",)  # too big to build whole (large: 0.9 GiB and 34 s; huge ~10×)
DATASETS = ("sandbox", *SCALES)


T = TypeVar("T")


class Resource:
    """A body to serve, with its weak ETag.

    The body may be given as a function of no arguments, called when the body is first read: a
    `304` answers from the ETag alone, so a report nobody reads is never serialised.
    """

    def __init__(self, body: bytes | Callable[[], bytes], etag: str) -> None:
        self._body = body
        self.etag = etag

    @property
    def body(self) -> bytes:
        if callable(self._body):
            self._body = self._body()
        return self._body


class _Derived(Generic[T]):
    """A value derived from one frame of a dataset (its reports by run, an index), kept for as
    long as the dataset holds that same frame.

    The frames are replaced, never changed in place (`advance_day`, `withdraw_course`, tests
    assigning `dataset.runs`), so identity says whether the value is stale, and no mutation has
    to remember to invalidate it. Built under a lock: after `advance_day` sixteen requests arrive
    at once, and each building `large`'s reports (a sort of 2M rows) would take 16× as long.
    """

    def __init__(self, build: Callable[[pl.DataFrame], T]) -> None:
        self._build = build
        self._source: pl.DataFrame | None = None  # held, so its id cannot be reused
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self, source: pl.DataFrame) -> T:
        with self._lock:
            if self._source is not source or self._value is None:
                self._value = self._build(source)
                self._source = source
            return self._value


def _reports_by_run(enrolments: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each run's report rows, in the order the API lists them."""
    ordered = enrolments.sort("run_uuid", "activated_at", "membership_uuid")
    return {key[0]: frame for key, frame in ordered.partition_by("run_uuid", as_dict=True).items()}


def _row_of_membership(memberships: pl.DataFrame) -> dict[str, int]:
    return {uuid: index for index, uuid in enumerate(memberships["membership_uuid"])}


def _listed_runs(runs: pl.DataFrame) -> frozenset[str]:
    return frozenset(runs["run_uuid"])


def _recorded(name: str) -> dict[str, Any]:
    return json.loads((SANDBOX_DIR / f"{name}.json").read_text())


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class SandboxDataset:
    """The recorded sandbox responses, answered byte for byte with their recorded ETags."""

    name = "sandbox"

    def __init__(self) -> None:
        self._by_path: dict[str, tuple[int, Resource]] = {}
        for name in (
            "course_runs",
            "course_run_one",
            "course_enrolments_report",
            "organisation_membership",
        ):
            recorded = _recorded(name)
            response = recorded["response"]
            etag = response["headers"].get("Etag", "")
            self._by_path[recorded["request"]["path"]] = (
                response["status"],
                Resource(_compact(response["body"]), etag),
            )

    def recorded(self, path: str) -> Resource | None:
        found = self._by_path.get(path)
        return found[1] if found else None

    # The simulator asks every dataset the same questions.
    def course_runs(self, base_url: str) -> Resource | None:
        return self.recorded("/partners/course_runs")

    def course_run(self, run_uuid: str, base_url: str) -> Resource | None:
        return self.recorded(f"/partners/course_runs/{run_uuid}")

    def report_size(self, run_uuid: str) -> int | None:
        resource = self.recorded(f"/partners/course_runs/{run_uuid}/course_enrolments_report")
        return None if resource is None else len(json.loads(resource.body))

    def enrolments_report(
        self, run_uuid: str, base_url: str, offset: int = 0, limit: int | None = None
    ) -> Resource | None:
        resource = self.recorded(f"/partners/course_runs/{run_uuid}/course_enrolments_report")
        if resource is None or (offset == 0 and limit is None):
            return resource
        records = json.loads(resource.body)
        page = records[offset : None if limit is None else offset + limit]
        return Resource(_compact(page), f'{resource.etag[:-1]}-{offset}"')

    def membership(self, membership_uuid: str, base_url: str) -> Resource | None:
        return self.recorded(f"/partners/organisation_memberships/{membership_uuid}")


_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")


def _uuids(rng: np.random.Generator, count: int) -> pl.Series:
    """Version-4 UUID strings, built a column at a time."""
    return _uuid_text(rng.integers(0, 256, (count, 16), dtype=np.uint8))


def _uuid_text(raw: np.ndarray) -> pl.Series:
    """Version-4 UUID strings from 16 bytes a row (the version and variant bits are set here)."""
    count = len(raw)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.empty((count, 32), dtype="S1")
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text = np.insert(digits, [8, 12, 16, 20], b"-", axis=1)
    return pl.Series(text.view("S36").ravel().astype("U36"), dtype=pl.String)


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _pick_within(rng: np.random.Generator, group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each element of `group`, a random index into that group's slice."""
    offsets = _offsets(counts)
    return offsets[group] + np.floor(rng.random(len(group)) * counts[group]).astype(np.int64)


def _report_body(page: pl.DataFrame, base_url: str) -> bytes:
    """A report's (or a page's) records, as the API writes them."""
    return (
        page.select(
            pl.struct(
                uuid="run_uuid",
                href=pl.concat_str(pl.lit(f"{base_url}/partners/course_runs/"), "run_uuid"),
            ).alias("run"),
            pl.struct(
                uuid="membership_uuid",
                href=pl.concat_str(
                    pl.lit(f"{base_url}/partners/organisation_memberships/"), "membership_uuid"
                ),
            ).alias("organisation_membership"),
            "status",
            pl.col("activated_at").dt.strftime(TIMESTAMP_FORMAT),
            pl.col("deactivated_at").dt.strftime(TIMESTAMP_FORMAT),
            "steps_completed_count",
            "steps_completed_ratio",
        )
        .write_json()
        .encode()
    )


@dataclass
class GeneratedDataset:
    """A consistent world of courses, runs, learners, memberships and enrolments."""

    name: str
    seed: int
    today: datetime
    courses: pl.DataFrame  # course_uuid, title, known
    runs: pl.DataFrame  # run_uuid, course_uuid, title, start_time, weeks_count
    memberships: pl.DataFrame  # membership_uuid, learner_uuid, external_learner_id, learner
    enrolments: pl.DataFrame  # run_uuid, membership_uuid, status, activated_at, … , learner
    users: pl.DataFrame  # id, email, forgotten: the platform users to seed
    day: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    # Derived from the frames above as they are now; see `_Derived`.
    _reports: _Derived[dict[str, pl.DataFrame]] = field(
        default_factory=lambda: _Derived(_reports_by_run), repr=False, compare=False
    )
    _membership_rows: _Derived[dict[str, int]] = field(
        default_factory=lambda: _Derived(_row_of_membership), repr=False, compare=False
    )
    _listed: _Derived[frozenset[str]] = field(
        default_factory=lambda: _Derived(_listed_runs), repr=False, compare=False
    )

    # --- what the platform needs to use it -----------------------------------------------------

    def activities(self) -> pl.DataFrame:
        """Activities making this dataset's known courses known (catalogue courses excluded)."""
        catalogue = {course["future_learn_course_uuid"] for course in load_catalogue()}
        known = self.courses.filter(pl.col("known") & ~pl.col("course_uuid").is_in(catalogue))
        return known.select(
            pl.concat_str(pl.lit("fl-"), pl.col("course_uuid")).alias("id"),
            "title",
            pl.lit(20.0).alias("credit"),
            pl.lit("online").alias("category"),
            pl.lit("future-learn").alias("provider"),
            pl.col("course_uuid").alias("future_learn_course_uuid"),
        )

    def known_run_count(self) -> int:
        known = self.courses.filter("known")["course_uuid"]
        return self.runs.filter(pl.col("course_uuid").is_in(known.implode())).height

    # --- serving -------------------------------------------------------------------------------

    def _etag(self, key: str, extra: str = "") -> str:
        # Only the resource's own version: a day that leaves a report alone keeps its ETag.
        return f'W/"{self.seed:x}-{self.versions.get(key, 0)}{extra}-{key[:8]}"'

    def _run_objects(self, runs: pl.DataFrame, base_url: str) -> pl.DataFrame:
        return runs.select(
            pl.col("run_uuid").alias("uuid"),
            pl.concat_str(pl.lit(f"{base_url}/partners/course_runs/"), "run_uuid").alias("href"),
            "title",
            pl.lit(None, pl.String).alias("full_code"),
            pl.lit(None, pl.String).alias("code"),
            pl.col("start_time").dt.strftime(TIMESTAMP_FORMAT),
            "weeks_count",
            pl.struct(
                uuid="course_uuid",
                href=pl.concat_str(pl.lit(f"{base_url}/partners/courses/"), "course_uuid"),
            ).alias("course"),
        )

    def course_runs(self, base_url: str) -> Resource | None:
        body = self._run_objects(self.runs, base_url).write_json().encode()
        return Resource(body, self._etag("course_runs"))

    def course_run(self, run_uuid: str, base_url: str) -> Resource | None:
        run = self.runs.filter(pl.col("run_uuid") == run_uuid)
        if run.is_empty():
            return None
        body = _compact(self._run_objects(run, base_url).to_dicts()[0])
        return Resource(body, self._etag(run_uuid, "r"))

    def _report_frames(self) -> dict[str, pl.DataFrame]:
        return self._reports.get(self.enrolments)

    def report_size(self, run_uuid: str) -> int | None:
        if run_uuid not in self._listed.get(self.runs):
            return None
        frame = self._report_frames().get(run_uuid)
        return 0 if frame is None else frame.height

    def enrolments_report(
        self, run_uuid: str, base_url: str, offset: int = 0, limit: int | None = None
    ) -> Resource | None:
        size = self.report_size(run_uuid)
        if size is None:
            return None
        frame = self._report_frames().get(run_uuid)
        if frame is None:
            return Resource(b"[]", self._etag(run_uuid))
        page = frame.slice(offset, limit)
        page_tag = "" if offset == 0 and limit is None else f"-{offset}-{limit}"
        return Resource(lambda: _report_body(page, base_url), self._etag(run_uuid, page_tag))

    def membership(self, membership_uuid: str, base_url: str) -> Resource | None:
        memberships = self.memberships  # one frame: its index and its rows
        index = self._membership_rows.get(memberships).get(membership_uuid)
        if index is None:
            return None
        row = memberships.row(index, named=True)
        body = {
            "uuid": row["membership_uuid"],
            "href": f"{base_url}/partners/organisation_memberships/{row['membership_uuid']}",
            "learner": {
                "uuid": row["learner_uuid"],
                "href": f"{base_url}/partners/learners/{row['learner_uuid']}",
            },
            "external_learner_id": row["external_learner_id"],
        }
        return Resource(_compact(body), self._etag(membership_uuid, "m"))

    # --- courses come and go --------------------------------------------------------------------

    def withdraw_course(self, course_uuid: str) -> pl.DataFrame:
        """FutureLearn stops listing a course: its runs leave `course_runs` (their reports answer
        404). Returns the runs taken away, for `list_runs` to bring back."""
        withdrawn = self.runs.filter(pl.col("course_uuid") == course_uuid)
        self.runs = self.runs.filter(pl.col("course_uuid") != course_uuid)
        self.versions["course_runs"] = self.versions.get("course_runs", 0) + 1
        return withdrawn

    def list_runs(self, runs: pl.DataFrame) -> None:
        """FutureLearn lists these runs (again), with the reports it has for them."""
        self.runs = pl.concat([self.runs, runs.select(self.runs.columns)])
        self.versions["course_runs"] = self.versions.get("course_runs", 0) + 1

    # --- time moves ----------------------------------------------------------------------------

    def advance_day(self, change_share: float = 0.05) -> dict[str, int]:
        """Move a day on: some learners progress or leave; new enrolments and memberships appear.

        Returns counts of what changed. ETags of every changed report change with it.
        """
        rng = np.random.default_rng([self.seed, self.day + 1])
        self.day += 1
        self.today += timedelta(days=1)
        today = pl.lit(self.today, UTC_TIME)
        enrolments = self.enrolments.with_row_index("_row")
        learners = enrolments["learner"].unique().sort().to_numpy()
        movers = rng.choice(learners, size=int(len(learners) * change_share), replace=False)
        # One enrolment of each mover changes; one in ten of those leaves instead of progressing.
        # Enrolments on runs no longer listed (a withdrawn course) stay as they are.
        listed = pl.col("run_uuid").is_in(self.runs["run_uuid"].implode())
        chosen = np.sort(  # group_by's order varies run to run: who leaves would vary with it
            enrolments.filter(
                pl.col("learner").is_in(movers) & (pl.col("status") == "active") & listed
            )
            .group_by("learner")
            .agg(pl.col("_row").min())["_row"]
            .to_numpy()
        )
        leaving = chosen[rng.random(len(chosen)) < 0.1]
        progressing = np.setdiff1d(chosen, leaving)
        total = pl.col("weeks_count_total")
        updated = (
            enrolments.join(
                self.runs.select(
                    "run_uuid", (pl.col("weeks_count") * STEPS_PER_WEEK).alias("weeks_count_total")
                ),
                on="run_uuid",
                how="left",
            )
            .with_columns(
                _gain=pl.lit(pl.Series(rng.integers(1, 10, enrolments.height))),
            )
            .with_columns(
                steps_completed_count=pl.when(pl.col("_row").is_in(progressing))
                .then(pl.min_horizontal(pl.col("steps_completed_count") + pl.col("_gain"), total))
                .otherwise("steps_completed_count"),
                status=pl.when(pl.col("_row").is_in(leaving))
                .then(pl.lit("deactivated"))
                .otherwise("status"),
                deactivated_at=pl.when(pl.col("_row").is_in(leaving))
                .then(today)
                .otherwise("deactivated_at"),
            )
            .with_columns(
                steps_completed_ratio=pl.when(pl.col("_row").is_in(progressing))
                .then(pl.col("steps_completed_count") / total)
                .otherwise("steps_completed_ratio")
            )
        )
        changed_runs = set(updated.filter(pl.col("_row").is_in(chosen))["run_uuid"])
        new_enrolments, new_memberships = self._new_enrolments(rng, max(1, len(chosen) // 5))
        changed_runs |= set(new_enrolments["run_uuid"])
        self.enrolments = pl.concat(
            [
                updated.select(self.enrolments.columns),
                new_enrolments.select(self.enrolments.columns),
            ]
        )
        self.memberships = pl.concat([self.memberships, new_memberships])
        for run_uuid in changed_runs:
            self.versions[run_uuid] = self.versions.get(run_uuid, 0) + 1
        return {
            "progressed": len(progressing),
            "deactivated": len(leaving),
            "new_enrolments": new_enrolments.height,
            "new_memberships": new_memberships.height,
            "changed_reports": len(changed_runs),
        }

    # --- courses are renamed and new ones appear ------------------------------------------------

    def rename_course(self, course_uuid: str, title: str) -> None:
        """The course's runs are listed under a new title."""
        ours = pl.col("course_uuid") == course_uuid
        self.courses = self.courses.with_columns(
            title=pl.when(ours).then(pl.lit(title)).otherwise("title")
        )
        self.runs = self.runs.with_columns(
            title=pl.when(ours).then(pl.lit(title)).otherwise("title")
        )
        self._runs_changed(self.runs.filter(ours)["run_uuid"])

    def add_course(self, title: str, learners: int) -> str:
        """A new known course with one run that started a week ago, on which `learners` existing
        learners enrolled (each through their first membership). Returns its uuid; the platform
        side (its activity) is the caller's to add."""
        rng = np.random.default_rng([self.seed, self.day, 1])
        course_uuid, run_uuid = _uuids(rng, 2).to_list()
        start = self.today - timedelta(days=7)
        weeks = 4
        self.courses = pl.concat(
            [
                self.courses,
                pl.DataFrame(
                    [(course_uuid, title, True)], schema=self.courses.schema, orient="row"
                ),
            ]
        )
        run = pl.DataFrame(
            {
                "run_uuid": [run_uuid],
                "course_uuid": [course_uuid],
                "title": [title],
                "start_time": pl.Series([start], dtype=UTC_TIME),
                "weeks_count": [weeks],
            }
        )
        self.runs = pl.concat([self.runs, run.select(self.runs.columns).cast(self.runs.schema)])
        first = self.memberships.group_by("learner", maintain_order=True).first().head(learners)
        steps = rng.integers(0, weeks * STEPS_PER_WEEK + 1, first.height)
        enrolments = pl.DataFrame(
            {
                "run_uuid": [run_uuid] * first.height,
                "membership_uuid": first["membership_uuid"],
                "status": ["active"] * first.height,
                "activated_at": pl.Series(
                    [start + timedelta(hours=1)] * first.height, dtype=UTC_TIME
                ),
                "deactivated_at": pl.Series([None] * first.height, dtype=UTC_TIME),
                "steps_completed_count": steps,
                "steps_completed_ratio": steps / (weeks * STEPS_PER_WEEK),
                "learner": first["learner"],
            }
        )
        self.enrolments = pl.concat([self.enrolments, enrolments.cast(self.enrolments.schema)])
        self._runs_changed(run["run_uuid"])
        return course_uuid

    def _runs_changed(self, run_uuids: pl.Series) -> None:
        # The runs list and each run's report change ETag, as their bodies did.
        for key in ["course_runs", *run_uuids.to_list()]:
            self.versions[key] = self.versions.get(key, 0) + 1

    def _new_enrolments(
        self, rng: np.random.Generator, count: int
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Existing learners start a course on a current run; half through a new membership."""
        learner_ids = self.memberships["learner"].unique().sort().to_numpy()
        learners = rng.choice(learner_ids, size=count, replace=True)
        fresh = rng.random(count) < 0.5
        existing = self.memberships.group_by("learner", maintain_order=True).agg(
            pl.col("membership_uuid").first(), pl.col("external_learner_id").first()
        )
        picked = pl.DataFrame({"learner": learners, "fresh": fresh}).join(
            existing, on="learner", how="left"
        )
        new_uuids = _uuids(rng, count)
        picked = picked.with_columns(
            membership_uuid=pl.when("fresh").then(new_uuids).otherwise("membership_uuid")
        )
        new_memberships = picked.filter("fresh").select(
            "membership_uuid",
            learner_uuid=pl.lit(None, pl.String),
            external_learner_id="external_learner_id",
            learner="learner",
        )
        learner_uuids = self.memberships.group_by("learner").agg(pl.col("learner_uuid").first())
        new_memberships = (
            new_memberships.drop("learner_uuid")
            .join(learner_uuids, on="learner", how="left")
            .select(self.memberships.columns)
        )
        recent = self.runs.sort("start_time", descending=True).head(max(1, self.runs.height // 4))
        run_rows = rng.integers(0, recent.height, count)
        today = self.today
        enrolments = pl.DataFrame(
            {
                "run_uuid": recent["run_uuid"].gather(run_rows),
                "membership_uuid": picked["membership_uuid"],
                "status": ["active"] * count,
                "activated_at": pl.Series([today] * count, dtype=UTC_TIME),
                "deactivated_at": pl.Series([None] * count, dtype=UTC_TIME),
                "steps_completed_count": pl.Series([0] * count, dtype=pl.Int64),
                "steps_completed_ratio": pl.Series([0.0] * count, dtype=pl.Float64),
                "learner": picked["learner"],
            }
        )
        return enrolments, new_memberships


def _course_frame(rng: np.random.Generator, scale: Scale) -> pl.DataFrame:
    catalogue = load_catalogue()
    sandbox_runs = _recorded("course_runs")["response"]["body"]
    catalogue_uuids = {course["future_learn_course_uuid"] for course in catalogue}
    unknown_titles: dict[str, str] = {}
    for run in sandbox_runs:  # the real courses the platform does not know, with real titles
        if run["course"]["uuid"] not in catalogue_uuids:
            unknown_titles.setdefault(run["course"]["uuid"], run["title"])
    known = [(c["future_learn_course_uuid"], c["title"], True) for c in catalogue]
    if scale.known_courses <= len(known):
        order = rng.permutation(len(known))[: scale.known_courses]
        known = [known[i] for i in sorted(order)]
    else:
        extra = scale.known_courses - len(known)
        known += [
            (uuid, f"Generated course {i + 1}", True)
            for i, uuid in enumerate(_uuids(rng, extra).to_list())
        ]
    unknown = [(uuid, title, False) for uuid, title in unknown_titles.items()]
    if scale.unknown_courses > len(unknown):
        extra = scale.unknown_courses - len(unknown)
        unknown += [
            (uuid, f"Course unknown to the platform {i + 1}", False)
            for i, uuid in enumerate(_uuids(rng, extra).to_list())
        ]
    unknown = unknown[: scale.unknown_courses]
    return pl.DataFrame(known + unknown, schema=["course_uuid", "title", "known"], orient="row")


def external_learner_id() -> pl.Expr:
    """A membership's external_learner_id from its learner (is_user, learner, id, email) and its
    draws (via, case): no one's for a non-user; else the user id (LTI, 60%) or the email in
    one of three cases (an invitation)."""
    return (
        pl.when(~pl.col("is_user"))
        .then(
            pl.concat_str(
                pl.lit("someone."),
                pl.col("learner").cast(pl.String),
                pl.lit("@elsewhere.example"),
            )
        )
        .when(pl.col("via") < 0.6)
        .then("id")
        .when(pl.col("case") == 0)
        .then(pl.col("email"))
        .when(pl.col("case") == 1)
        .then(pl.col("email").str.to_uppercase())
        .otherwise(pl.col("email").str.to_titlecase())
    )


def _run_frame(
    rng: np.random.Generator, scale: Scale, courses: pl.DataFrame, today: datetime
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """The runs, with each run's course row, weeks and start (µs): every course gets a run."""
    n_courses = courses.height
    today_us = int(today.timestamp() * 1_000_000)
    # Every course gets a run; the rest go where they fall.
    run_course = np.concatenate(
        [np.arange(n_courses), rng.integers(0, n_courses, max(0, scale.runs - n_courses))]
    )
    run_course.sort()
    n_runs = len(run_course)
    weeks = rng.choice([3, 4, 5, 6], n_runs)
    # Runs start on Mondays at midnight, from three years ago to a month ahead.
    monday = today_us - ((today.weekday()) * DAY_US) - (today_us % DAY_US)
    start_weeks = rng.integers(-156, 5, n_runs)
    run_start = monday + start_weeks * 7 * DAY_US
    runs = pl.DataFrame(
        {
            "run_uuid": _uuids(rng, n_runs),
            "course_uuid": courses["course_uuid"].gather(run_course),
            "title": courses["title"].gather(run_course),
            "start_time": pl.Series(run_start, dtype=pl.Int64).cast(UTC_TIME),
            "weeks_count": pl.Series(weeks, dtype=pl.Int64),
        }
    )
    return runs, run_course, weeks, run_start


def draw_progress(
    rng: np.random.Generator,
    start: np.ndarray,
    attempt: np.ndarray,
    weeks: np.ndarray,
    today_us: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each enrolment's activation, steps completed and deactivation, drawn in one fixed order.

    Shared by `generate` and the streamed `huge` generator: the draws' order is what makes a
    workload the same bytes every time, so it lives in one place.
    Returns (activated_us, completed, deactivated, deactivated_at_us, total_steps).
    """
    n = len(start)
    activated = start - (rng.random(n) * 21 * DAY_US).astype(np.int64)
    activated += attempt * (30 * DAY_US + (rng.random(n) * 60 * DAY_US).astype(np.int64))
    activated = np.minimum(activated, today_us - 3_600_000_000)
    activated -= activated % 1000  # the API has millisecond precision
    total_steps = weeks * STEPS_PER_WEEK
    draw = rng.random(n)
    completed = np.where(
        draw < 0.25,
        0,
        np.where(draw > 0.85, total_steps, np.floor(rng.random(n) * total_steps)),
    ).astype(np.int64)
    deactivated = rng.random(n) < 0.1
    deactivated_at = np.minimum(
        activated + (rng.random(n) * 60 * DAY_US).astype(np.int64) + 3_600_000_000,
        today_us - 60_000_000,
    )
    deactivated_at -= deactivated_at % 1000
    return activated, completed, deactivated, deactivated_at, total_steps


def generate(name: str, seed: int = 1, today: datetime | None = None) -> GeneratedDataset:
    """Build the `demo`, `teachcomputing` or `large` dataset from a seed, whole."""
    if name in STREAMED:
        raise ValueError(f"'{name}' is generated a course at a time: use load() (streamed.py)")
    scale = SCALES[name]
    rng = np.random.default_rng(seed)
    today = today or datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    today_us = int(today.timestamp() * 1_000_000)

    courses = _course_frame(rng, scale)
    n_courses = courses.height
    runs, run_course, weeks, run_start = _run_frame(rng, scale, courses, today)

    # Learners: most are platform users; a learner has one to three memberships.
    n_learners = scale.learners
    is_user = rng.random(n_learners) < 0.92
    forgotten = rng.random(n_learners) < 0.005
    learner_idx = np.arange(n_learners)
    user_ids = pl.Series((100_000 + learner_idx).astype(str))
    email_local = pl.Series(learner_idx.astype(str))
    users_frame = pl.DataFrame(
        {"learner": learner_idx, "id": user_ids, "n": email_local}
    ).with_columns(
        email=pl.concat_str(
            pl.when(pl.col("learner") % 97 == 0)
            .then(pl.lit("first_last."))
            .otherwise(pl.lit("teacher.")),
            "n",
            pl.lit("@school"),
            (pl.col("learner") % 50).cast(pl.String),
            pl.lit(".example.org"),
        ),
        forgotten=pl.Series(forgotten),
        is_user=pl.Series(is_user),
    )
    per_learner = rng.choice([1, 2, 3], n_learners, p=[0.8, 0.15, 0.05])
    membership_learner = np.repeat(learner_idx, per_learner)
    n_memberships = len(membership_learner)
    via = rng.random(n_memberships)  # < 0.6: LTI (user id); else invitation (email, any case)
    case = rng.integers(0, 3, n_memberships)
    memberships = (
        pl.DataFrame(
            {
                "membership_uuid": _uuids(rng, n_memberships),
                "learner": membership_learner,
                "via": via,
                "case": case,
            }
        )
        .join(users_frame.select("learner", "id", "email", "is_user"), on="learner", how="left")
        .join(
            pl.DataFrame({"learner": learner_idx, "learner_uuid": _uuids(rng, n_learners)}),
            on="learner",
            how="left",
        )
        .with_columns(external_learner_id=external_learner_id())
        .select("membership_uuid", "learner_uuid", "external_learner_id", "learner")
    )

    # Enrolments: learner-course pairs, each on one run through one of the learner's memberships.
    mean_courses = scale.enrolments / 1.12 / n_learners
    courses_per_learner = np.maximum(1, rng.poisson(max(mean_courses - 1, 0.01), n_learners) + 1)
    pair_learner = np.repeat(learner_idx, courses_per_learner)
    pair_course = rng.integers(0, n_courses, len(pair_learner))
    pairs = np.unique(np.stack([pair_learner, pair_course], axis=1), axis=0)
    # Re-enrolment on a later run (possibly through another membership) for some pairs.
    again = pairs[rng.random(len(pairs)) < 0.12]
    all_pairs = np.concatenate([pairs, again])
    attempt = np.concatenate([np.zeros(len(pairs), np.int64), np.ones(len(again), np.int64)])
    runs_per_course = np.bincount(run_course, minlength=n_courses)
    run_row = _pick_within(rng, all_pairs[:, 1], runs_per_course)
    membership_row = _pick_within(rng, all_pairs[:, 0], per_learner)
    activated, completed, deactivated, deactivated_at, total_steps = draw_progress(
        rng, run_start[run_row], attempt, weeks[run_row], today_us
    )
    enrolments = pl.DataFrame(
        {
            "run_uuid": runs["run_uuid"].gather(run_row),
            "membership_uuid": memberships["membership_uuid"].gather(membership_row),
            "status": np.where(deactivated, "deactivated", "active"),
            "activated_at": pl.Series(activated, dtype=pl.Int64).cast(UTC_TIME),
            "deactivated_at": pl.Series(np.where(deactivated, deactivated_at, 0), dtype=pl.Int64)
            .cast(UTC_TIME)
            .set(pl.Series(~deactivated), None),
            "steps_completed_count": completed,
            "steps_completed_ratio": completed / total_steps,
            "learner": all_pairs[:, 0],
        }
    )
    users = users_frame.filter("is_user").select("id", "email", "forgotten")
    return GeneratedDataset(
        name=name,
        seed=seed,
        today=today,
        courses=courses,
        runs=runs,
        memberships=memberships,
        enrolments=enrolments,
        users=users,
    )


def load(name: str, seed: int = 1) -> SandboxDataset | GeneratedDataset:
    if name == "sandbox":
        return SandboxDataset()
    if name not in SCALES:
        raise ValueError(f"unknown dataset '{name}'; one of {', '.join(DATASETS)}")
    if name in STREAMED:
        from sync_assets.simulator.streamed import StreamedDataset

        return StreamedDataset.build(name, seed)
    return generate(name, seed)
