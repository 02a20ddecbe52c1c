"""What one step of the sync produced for one course: a frame, a failure with its reason, or
"unchanged since its last successful sync".

Every per-course step takes and returns `{course_uuid: Outcome}`; Dagster's side of it (partition
keys, metadata, failed partitions) is `defs/sync/course_step.py`, and how an outcome is stored
between steps is `defs/storage.py`. `facts` are what a course's partition shows in the UI for
this step (counts, status); they are not stored with the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl


@dataclass(frozen=True)
class Computed:
    """A course's frame, with notes on what it was computed from (`stamps`, kept with it)."""

    frame: pl.DataFrame
    stamps: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """A course the step could not compute, and why (one line, no personal data).

    `expected`: a failure that is no fault (another writer holds the course and applies it):
    logged as a warning, not an error.
    """

    reason: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    expected: bool = False


@dataclass(frozen=True)
class Unchanged:
    """A course skipped: its reports and platform side are those of its last successful sync."""

    facts: Mapping[str, Any] = field(default_factory=dict)


Outcome = Computed | Failed | Unchanged


class Outcomes(Mapping[str, Outcome]):
    """`{course: Outcome}` whose frames may be read only when asked for (`StoredOutcomes`).

    `kind` answers without reading a frame, so a step can sort its courses first and then hold
    one course's frames at a time.
    """

    def kind(self, course: str) -> type[Computed] | type[Failed] | type[Unchanged]:
        return type(self[course])

    def failures(self) -> dict[str, str]:
        failed = {}
        for course in self:
            if self.kind(course) is Failed:
                outcome = self[course]
                assert isinstance(outcome, Failed)
                failed[course] = outcome.reason
        return failed

    def unchanged(self) -> set[str]:
        return {course for course in self if self.kind(course) is Unchanged}

    def computed(self) -> set[str]:
        return {course for course in self if self.kind(course) is Computed}

    def frame(self, course: str) -> pl.DataFrame:
        outcome = self[course]
        if not isinstance(outcome, Computed):
            raise ValueError(f"course {course} has no frame: {type(outcome).__name__}")
        return outcome.frame

    def frames(self, courses: Iterable[str] | None = None) -> FramesView:
        """The frames of `courses` (default: every computed course), read when asked for."""
        return FramesView(self, sorted(self.computed() if courses is None else courses))


class FramesView(Mapping[str, pl.DataFrame]):
    """`{course: frame}` over outcomes, each frame read when asked for."""

    def __init__(self, outcomes: Outcomes, courses: list[str]) -> None:
        self._outcomes = outcomes
        self._courses = courses
        self._members = set(courses)

    def __getitem__(self, course: str) -> pl.DataFrame:
        if course not in self._members:
            raise KeyError(course)
        return self._outcomes.frame(course)

    def __iter__(self) -> Iterator[str]:
        return iter(self._courses)

    def __len__(self) -> int:
        return len(self._courses)

    def __contains__(self, course: object) -> bool:
        return course in self._members
