"""A generated dataset too big to build whole (`huge`: 20M enrolments, 10M learners).

`generate()` builds every frame at once: `large` peaks at 0.9 GiB and takes 34 s, so `huge` would
need ~9 GiB in the simulator alone. Here only the courses and runs (10k and 40k rows) are built
whole. Everything about a learner is a pure function of its index (hashed with the seed), and a
course's enrolments come from a generator seeded with the course's index, so any course, any
membership and any block of users can be produced on its own, in any order, the same every time:

- a course's enrolments: ~1,800 learners drawn from all 10M (so a learner is in ~1.8 courses, as
  in `large`, and spans the catalogue), 12% of them enrolled again on a later run; one membership
  of the learner's one to three, runs, times and progress drawn as `generate()` draws them;
- a membership uuid carries its (learner, index) in its last 48 bits, multiplied by an odd
  constant, so a membership look-up needs no index of 12M uuids: it decodes, then checks that
  the uuid is the one that learner's membership has;
- users come in blocks (`user_blocks`) for the platform to be seeded a block at a time.

The simulator keeps the reports of the courses last asked for (an LRU of course frames), with
the look-up answers of their memberships. Time
does not move in this dataset (`advance_day` refuses): it is for first syncs in chunks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from sync_assets.partners_api.contract import UTC_TIME
from sync_assets.simulator.datasets import (
    SCALES,
    GeneratedDataset,
    Resource,
    _compact,
    _course_frame,
    _offsets,
    _run_frame,
    _uuid_text,
    draw_progress,
    external_learner_id,
)

_MASK48 = (1 << 48) - 1
_MULTIPLIER = 0x9E37_79B9_7F4B  # odd: invertible modulo 2^48
_INVERSE = pow(_MULTIPLIER, -1, 1 << 48)
_LEARNER_SALT, _MEMBERSHIP_SALT, _UUID_SALT = 0x4C45, 0x4D45, 0x5555
_COURSE_KEY = 0x6875_6765  # mixed into each course's generator seed
CACHED_COURSES = 256


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on a uint64 array (wrapping arithmetic)."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash(seed: int, salt: int, values: np.ndarray) -> np.ndarray:
    key = np.uint64(((seed & 0xFFFF_FFFF) << 20 | salt) & 0xFFFF_FFFF_FFFF_FFFF)
    return _mix(_mix(np.asarray(values, dtype=np.uint64) ^ key) + np.uint64(salt))


def _uniform(hashed: np.ndarray) -> np.ndarray:
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Learners:
    """Everything about learners, as pure functions of their indices."""

    seed: int
    count: int

    def draws(self, learner: np.ndarray) -> dict[str, np.ndarray]:
        """is_user (92%), forgotten (0.5%), memberships (1–3: 80/15/5%)."""
        base = np.asarray(learner, dtype=np.uint64) * np.uint64(4)
        is_user = _uniform(_hash(self.seed, _LEARNER_SALT, base)) < 0.92
        forgotten = _uniform(_hash(self.seed, _LEARNER_SALT, base + np.uint64(1))) < 0.005
        share = _uniform(_hash(self.seed, _LEARNER_SALT, base + np.uint64(2)))
        memberships = np.where(share < 0.8, 1, np.where(share < 0.95, 2, 3)).astype(np.int64)
        return {"is_user": is_user, "forgotten": forgotten, "memberships": memberships}

    def uuids(self, codes: np.ndarray) -> pl.Series:
        """UUIDs for codes learner * 4 + k: k < 3 a membership, k = 3 the learner itself."""
        codes = np.asarray(codes, dtype=np.uint64)
        raw = np.empty((len(codes), 16), dtype=np.uint8)
        high = _hash(self.seed, _UUID_SALT, codes)
        low = _hash(self.seed, _UUID_SALT + 1, codes)
        raw[:, 0:8] = high.astype(">u8").view(np.uint8).reshape(-1, 8)
        raw[:, 8:10] = low.astype(">u8").view(np.uint8).reshape(-1, 8)[:, :2]
        tail = (codes * np.uint64(_MULTIPLIER)) & np.uint64(_MASK48)
        raw[:, 10:16] = tail.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 2:]
        return _uuid_text(raw)

    def code_of(self, membership_uuid: str) -> int | None:
        """The learner * 4 + k a membership uuid was made from, or None if it is none of ours."""
        try:
            tail = int(membership_uuid[-12:], 16)
        except ValueError:
            return None
        code = (tail * _INVERSE) & _MASK48
        learner, k = divmod(code, 4)
        if len(membership_uuid) != 36 or learner >= self.count or k == 3:
            return None
        if k >= self.draws(np.array([learner]))["memberships"][0]:
            return None
        if self.uuids(np.array([code]))[0] != membership_uuid:
            return None
        return code

    def users(self, learner: np.ndarray) -> pl.DataFrame:
        """learner, id, email, forgotten, is_user: as `generate()` makes them."""
        draws = self.draws(learner)
        return pl.DataFrame(
            {"learner": np.asarray(learner, dtype=np.int64)},
        ).with_columns(
            id=(pl.col("learner") + 100_000).cast(pl.String),
            email=pl.concat_str(
                pl.when(pl.col("learner") % 97 == 0)
                .then(pl.lit("first_last."))
                .otherwise(pl.lit("teacher.")),
                pl.col("learner").cast(pl.String),
                pl.lit("@school"),
                (pl.col("learner") % 50).cast(pl.String),
                pl.lit(".example.org"),
            ),
            forgotten=pl.Series(draws["forgotten"]),
            is_user=pl.Series(draws["is_user"]),
        )

    def memberships(self, codes: np.ndarray) -> pl.DataFrame:
        """membership_uuid, learner_uuid, external_learner_id, learner for codes learner*4+k."""
        codes = np.asarray(codes, dtype=np.int64)
        learner = codes // 4
        via = _uniform(_hash(self.seed, _MEMBERSHIP_SALT, codes.astype(np.uint64)))
        case = _hash(self.seed, _MEMBERSHIP_SALT + 1, codes.astype(np.uint64)) % np.uint64(3)
        return (
            self.users(learner)
            .with_columns(
                membership_uuid=self.uuids(codes),
                learner_uuid=self.uuids(learner * 4 + 3),
                via=pl.Series(via),
                case=pl.Series(case.astype(np.int64)),
            )
            .with_columns(external_learner_id=external_learner_id())
            .select("membership_uuid", "learner_uuid", "external_learner_id", "learner")
        )


@dataclass
class CourseArrays:
    """One course's enrolments before they become strings: what statistics need."""

    run_row: np.ndarray
    membership_code: np.ndarray  # learner * 4 + k
    activated: np.ndarray
    deactivated: np.ndarray
    deactivated_at: np.ndarray
    completed: np.ndarray
    total_steps: np.ndarray


class StreamedDataset(GeneratedDataset):
    """`huge`: served a course at a time (see the module's doc). Only first syncs."""

    learners: Learners
    _run_course: np.ndarray
    _weeks: np.ndarray
    _run_start: np.ndarray
    _cache: OrderedDict[int, _CachedCourse]  # the courses served lately, the latest last
    _cache_lock: threading.Lock
    _building: dict[int, threading.Lock]  # course → held while one thread builds it

    @classmethod
    def build(cls, name: str, seed: int = 1, today: datetime | None = None) -> StreamedDataset:
        scale = SCALES[name]
        rng = np.random.default_rng(seed)
        today = today or datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
        courses = _course_frame(rng, scale)
        runs, run_course, weeks, run_start = _run_frame(rng, scale, courses, today)
        empty = pl.DataFrame()
        dataset = cls(
            name=name,
            seed=seed,
            today=today,
            courses=courses,
            runs=runs,
            memberships=empty,
            enrolments=empty,
            users=empty,
        )
        dataset.learners = Learners(seed, scale.learners)
        dataset._run_course = run_course
        dataset._weeks = weeks
        dataset._run_start = run_start
        dataset._runs_per_course = np.bincount(run_course, minlength=courses.height)
        dataset._first_run = _offsets(dataset._runs_per_course)
        dataset._course_of_run = dict(
            zip(runs["run_uuid"].to_list(), run_course.tolist(), strict=True)
        )
        # Pairs per course: enrolments / 1.12 (re-enrolments) spread evenly, as in generate().
        dataset._pairs_per_course = scale.enrolments / 1.12 / courses.height
        dataset._cache = OrderedDict()
        dataset._cache_lock = threading.Lock()
        dataset._building = {}
        return dataset

    # --- generation, a course at a time --------------------------------------------------------

    def course_arrays(self, course: int) -> CourseArrays:
        """The enrolments of the course at row `course` of `courses`, as arrays."""
        rng = np.random.default_rng([self.seed, _COURSE_KEY, course])
        today_us = int(self.today.timestamp() * 1_000_000)
        drawn = rng.integers(0, self.learners.count, rng.poisson(self._pairs_per_course))
        learners = np.unique(drawn)
        again = learners[rng.random(len(learners)) < 0.12]
        learner = np.concatenate([learners, again])
        attempt = np.concatenate([np.zeros(len(learners), np.int64), np.ones(len(again), np.int64)])
        n = len(learner)
        run_row = self._first_run[course] + np.floor(
            rng.random(n) * self._runs_per_course[course]
        ).astype(np.int64)
        per_learner = self.learners.draws(learner)["memberships"]
        k = np.floor(rng.random(n) * per_learner).astype(np.int64)
        activated, completed, deactivated, deactivated_at, total_steps = draw_progress(
            rng, self._run_start[run_row], attempt, self._weeks[run_row], today_us
        )
        return CourseArrays(
            run_row, learner * 4 + k, activated, deactivated, deactivated_at, completed, total_steps
        )

    def course_enrolments(self, course: int) -> pl.DataFrame:
        """The course's enrolments, with the columns of `GeneratedDataset.enrolments`."""
        return self._enrolments_frame(self.course_arrays(course))

    def _enrolments_frame(self, a: CourseArrays) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "run_uuid": self.runs["run_uuid"].gather(a.run_row),
                "membership_uuid": self.learners.uuids(a.membership_code),
                "status": np.where(a.deactivated, "deactivated", "active"),
                "activated_at": pl.Series(a.activated, dtype=pl.Int64).cast(UTC_TIME),
                "deactivated_at": pl.Series(
                    np.where(a.deactivated, a.deactivated_at, 0), dtype=pl.Int64
                )
                .cast(UTC_TIME)
                .set(pl.Series(~a.deactivated), None),
                "steps_completed_count": a.completed,
                "steps_completed_ratio": a.completed / a.total_steps,
                "learner": a.membership_code // 4,
            }
        )

    def user_blocks(self, block: int = 500_000) -> Iterator[pl.DataFrame]:
        """The platform users to seed (id, email, forgotten), `block` learners at a time."""
        for start in range(0, self.learners.count, block):
            learner = np.arange(start, min(start + block, self.learners.count))
            users = self.learners.users(learner)
            yield users.filter("is_user").select("id", "email", "forgotten")

    # --- serving -------------------------------------------------------------------------------

    def _course_reports(self, course: int) -> dict[str, pl.DataFrame]:
        return self._course(course).reports

    def _course(self, course: int) -> _CachedCourse:
        with self._cache_lock:
            building = self._building.setdefault(course, threading.Lock())
        # One thread builds a course; the others asking for its runs meanwhile wait for it.
        with building:
            found = self._cached_course(course)
            if found is None:
                found = self._build_course(course)
        with self._cache_lock:
            self._building.pop(course, None)
        return found

    def _cached_course(self, course: int) -> _CachedCourse | None:
        with self._cache_lock:
            found = self._cache.get(course)
            if found is not None:
                self._cache.move_to_end(course)
            return found

    def _build_course(self, course: int) -> _CachedCourse:
        arrays = self.course_arrays(course)
        ordered = self._enrolments_frame(arrays).sort("run_uuid", "activated_at", "membership_uuid")
        reports = {
            key[0]: frame for key, frame in ordered.partition_by("run_uuid", as_dict=True).items()
        }
        # The course's memberships in one go: the client looks them up right after its reports,
        # and one at a time each costs a few polars frames (~6 ms: 165 look-ups/s on a core).
        codes = np.unique(arrays.membership_code)
        rows = self.learners.memberships(codes)
        memberships = dict(
            zip(
                rows["membership_uuid"].to_list(),
                zip(
                    rows["learner_uuid"].to_list(),
                    rows["external_learner_id"].to_list(),
                    strict=True,
                ),
                strict=True,
            )
        )
        cached = _CachedCourse(reports, memberships)
        with self._cache_lock:
            self._cache[course] = cached
            while len(self._cache) > CACHED_COURSES:
                self._cache.popitem(last=False)
        return cached

    def _cached_membership(self, membership_uuid: str) -> tuple[str, str] | None:
        """(learner uuid, external id) of a membership of a course served lately, or None."""
        with self._cache_lock:
            for cached in reversed(self._cache.values()):  # the latest course first
                found = cached.memberships.get(membership_uuid)
                if found is not None:
                    return found
        return None

    def _report_frames(self) -> _Reports:  # type: ignore[override]
        return _Reports(self)

    def report_size(self, run_uuid: str) -> int | None:
        course = self._course_of_run.get(run_uuid)
        if course is None:
            return None
        frame = self._course_reports(course).get(run_uuid)
        return 0 if frame is None else frame.height

    def membership(self, membership_uuid: str, base_url: str) -> Resource | None:
        found = self._cached_membership(membership_uuid)
        if found is None:  # not of a course served lately: decoded from the uuid itself
            code = self.learners.code_of(membership_uuid)
            if code is None:
                return None
            row = self.learners.memberships(np.array([code])).row(0, named=True)
            found = (row["learner_uuid"], row["external_learner_id"])
        learner_uuid, external_id = found
        body = {
            "uuid": membership_uuid,
            "href": f"{base_url}/partners/organisation_memberships/{membership_uuid}",
            "learner": {
                "uuid": learner_uuid,
                "href": f"{base_url}/partners/learners/{learner_uuid}",
            },
            "external_learner_id": external_id,
        }
        return Resource(_compact(body), self._etag(membership_uuid, "m"))

    def advance_day(self, change_share: float = 0.05) -> dict[str, int]:
        raise TypeError(f"'{self.name}' is for first syncs in chunks: time does not move in it")

    def describe(self) -> str:
        return (
            f"{self.runs.height} runs, ~{SCALES[self.name].enrolments} enrolments and "
            f"{self.learners.count} learners, generated a course at a time"
        )


@dataclass(frozen=True)
class _CachedCourse:
    """A course served lately: its reports by run, and its memberships' look-up answers."""

    reports: dict[str, pl.DataFrame]
    memberships: dict[str, tuple[str, str]]  # uuid → (learner uuid, external learner id)


class _Reports:
    """What `GeneratedDataset.enrolments_report` reads: run uuid → its report frame, lazily."""

    def __init__(self, dataset: StreamedDataset) -> None:
        self._dataset = dataset

    def get(self, run_uuid: str) -> pl.DataFrame | None:
        course = self._dataset._course_of_run.get(run_uuid)
        if course is None:
            return None
        return self._dataset._course_reports(course).get(run_uuid)
