"""One partition per known FutureLearn course (R1), keyed `<title slug>-<short uuid>`.

An operator looks for "the course a teacher complained about" by its title, so the key starts
with the title's slug; it ends with the first hex digits of the course uuid, which is what ties
the key to the course. The slug is fixed when the partition is added: a course renamed later
keeps its key (its history, its stored outputs and every link to it stay put), and the current
title is shown beside the key in the metadata.

Nothing else stores the mapping: a key's course is the one course whose uuid starts with the
key's hex suffix. The suffix is 8 digits, longer when another course's uuid shares them, so a
key names one course among all courses FutureLearn lists or the platform knows. A bare uuid (the
keys of earlier versions, until `migrate` replaces them) names itself.

Courses come and go (R1): a known course FutureLearn stops listing keeps its partition (it is
withdrawn: nothing to sync, nothing failed); a course the platform stops knowing has its
partition retired.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
import uuid as uuid_module
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

course_partitions = dg.DynamicPartitionsDefinition(name="course")

SLUG_MAX_LENGTH = 48
SUFFIX_LENGTHS = (8, 12, 16, 32)


def course_chunks(partition_keys: list[str], per_run: int | None) -> list[list[str]]:
    """Consecutive course partitions in runs of at most `per_run` (None: all in one run).

    Consecutive, in the partitions' own order, because a run covers a partition *range*.
    """
    if not partition_keys:
        return []
    if per_run is None:
        return [list(partition_keys)]
    return [
        list(partition_keys[start : start + per_run])
        for start in range(0, len(partition_keys), per_run)
    ]


# A night runs at most this many runs of changed courses (each a range of consecutive
# partitions, plus the chunks SYNC_ASSETS_COURSES_PER_RUN asks for): when the changed courses
# are scattered wider, the closest ranges are joined and the unchanged courses between them are
# skipped inside the run (as unchanged) rather than costing a run each.
MAX_RANGES_PER_NIGHT = 8


# `sync-assets sync` runs a night of many changed courses as overlapping runs (one linking and
# writing while the next reads its reports, runs/execution.py): at most OVERLAP_RUNS, of at least
# OVERLAP_MIN_COURSES courses but the last, since each run costs its own start and steps (~1–3 s).
OVERLAP_RUNS = 4
OVERLAP_MIN_COURSES = 50


def overlapping_chunk(changed: int) -> int | None:
    """Courses per run for a night of `changed` courses run as overlapping runs: None (one run)
    for fewer than 2 × OVERLAP_MIN_COURSES."""
    if changed < 2 * OVERLAP_MIN_COURSES:
        return None
    return max(OVERLAP_MIN_COURSES, -(-changed // OVERLAP_RUNS))


def is_partitioned_run(run_tags: Mapping[str, str]) -> bool:
    """Whether a run covers course partitions (one, or a range), by its tags."""
    return "dagster/partition" in run_tags or "dagster/asset_partition_range_start" in run_tags


def run_partition_keys(run_tags: Mapping[str, str], partition_keys: Sequence[str]) -> list[str]:
    """The course partitions a run covers, from its tags, in the partitions' order: its one
    partition, its range, or none (a run of `course_runs` alone)."""
    single = run_tags.get("dagster/partition")
    if single is not None:
        return [single] if single in partition_keys else []
    start = run_tags.get("dagster/asset_partition_range_start")
    end = run_tags.get("dagster/asset_partition_range_end")
    if start is None or end is None or start not in partition_keys or end not in partition_keys:
        return []
    keys = list(partition_keys)
    return keys[keys.index(start) : keys.index(end) + 1]


def changed_ranges(
    partition_keys: Sequence[str],
    changed: Collection[str],
    per_run: int | None,
    max_ranges: int = MAX_RANGES_PER_NIGHT,
) -> list[list[str]]:
    """Runs covering every changed course: ranges of consecutive partitions (a run covers a
    range), each cut into chunks of `per_run`. Unchanged courses fall inside a range only when
    more than `max_ranges` ranges would be needed: the narrowest gaps are joined first."""
    positions = [i for i, key in enumerate(partition_keys) if key in changed]
    if not positions:
        return []
    spans = [[positions[0], positions[0]]]
    for position in positions[1:]:
        if position == spans[-1][1] + 1:
            spans[-1][1] = position
        else:
            spans.append([position, position])
    while len(spans) > max(1, max_ranges):
        gap = min(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - spans[i][1])
        spans[gap : gap + 2] = [[spans[gap][0], spans[gap + 1][1]]]
    return [
        chunk
        for start, end in spans
        for chunk in course_chunks(list(partition_keys[start : end + 1]), per_run)
    ]


def first_run_of_night(run_tags: Mapping[str, str], partition_keys: Sequence[str]) -> bool:
    """Whether a sync run is the one that records the night's partition table: it covers a
    range from the first course partition (the nightly schedule's and `sync`'s first chunk, or
    their only run), or no course partition at all (`course_runs` alone). A rerun of chosen
    courses does not: the table is the catalogue's, which such a run does not change."""
    start = run_tags.get("dagster/asset_partition_range_start")
    if start is not None:
        return not partition_keys or start == partition_keys[0]
    return "dagster/partition" not in run_tags


def slugify(title: str) -> str:
    """Lower-case ASCII words joined by '-', cut at a word boundary: what a person types."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    if len(slug) > SLUG_MAX_LENGTH:
        cut = slug[: SLUG_MAX_LENGTH + 1]
        slug = cut[: cut.rfind("-")] if "-" in cut else slug[:SLUG_MAX_LENGTH]
    return slug or "course"


def is_bare_uuid(key: str) -> bool:
    try:
        return str(uuid_module.UUID(key)) == key.lower()
    except ValueError:
        return False


def _hex(course_uuid: str) -> str:
    return course_uuid.replace("-", "").lower()


class UuidPrefixes:
    """Course uuids by their hex digits, sorted: the uuids a key suffix (a prefix of the digits)
    names are one contiguous range, found by bisection rather than by scanning every course
    (every key against every course was ~160 s a run at 9,800 courses; analysis.md, huge)."""

    def __init__(self, course_uuids: Iterable[str]) -> None:
        pairs = sorted({(_hex(uuid), uuid.lower()) for uuid in course_uuids})
        self._digits = [digits for digits, _ in pairs]
        self._uuids = [uuid for _, uuid in pairs]

    def matching(self, prefix: str) -> list[str]:
        """The uuids whose hex digits start with `prefix` (lower-case hex), in digit order."""
        start = bisect.bisect_left(self._digits, prefix)
        end = bisect.bisect_left(self._digits, prefix + "g")  # "g" sorts after every hex digit
        return self._uuids[start:end]


def new_partition_key(
    course_uuid: str, title: str, every_course_uuid: Collection[str] | UuidPrefixes
) -> str:
    """The key of a course's new partition: its title's slug and the shortest unique suffix."""
    own = _hex(course_uuid)
    prefixes = (
        every_course_uuid
        if isinstance(every_course_uuid, UuidPrefixes)
        else UuidPrefixes(every_course_uuid)
    )
    for length in SUFFIX_LENGTHS:
        if all(_hex(other) == own for other in prefixes.matching(own[:length])):
            return f"{slugify(title)}-{own[:length]}"
    return f"{slugify(title)}-{own}"


def key_suffix(key: str) -> str:
    return key.rsplit("-", 1)[-1].lower()


@dataclass(frozen=True)
class CourseKeys:
    """Partition key ↔ course uuid, for a set of partition keys and the courses they may name."""

    uuid_of_key: Mapping[str, str]

    @classmethod
    def resolve(
        cls, keys: Iterable[str], course_uuids: Iterable[str], known: Collection[str] = ()
    ) -> CourseKeys:
        """Each key's course. A key whose suffix several courses share takes the one that no key
        with a longer suffix names (the longer one was made because they collide), else the one
        known course among them (a course listed later may share an old key's digits); a key
        that names no course, or several, is left out. A bare uuid names itself."""
        candidates = UuidPrefixes(course_uuids)
        mapping: dict[str, str] = {}
        claimed: set[str] = set()
        readable = [key for key in keys if not is_bare_uuid(key)]
        for key in sorted(readable, key=lambda key: (-len(key_suffix(key)), key)):
            suffix = key_suffix(key)
            if not re.fullmatch(r"[0-9a-f]{8,32}", suffix):
                continue
            matches = [u for u in candidates.matching(suffix) if u not in claimed]
            if len(matches) > 1:
                matches = [u for u in matches if u in known]
            if len(matches) == 1:
                mapping[key] = matches[0]
                claimed.add(matches[0])
        mapping |= {key: key.lower() for key in keys if is_bare_uuid(key)}
        return cls(mapping)

    @property
    def key_of_uuid(self) -> dict[str, str]:
        """Each course's key; a readable key over a bare uuid while both exist (mid-migration)."""
        by_uuid = {uuid: key for key, uuid in self.uuid_of_key.items() if is_bare_uuid(key)}
        return by_uuid | {
            uuid: key for key, uuid in self.uuid_of_key.items() if not is_bare_uuid(key)
        }

    def uuid(self, key: str) -> str | None:
        return self.uuid_of_key.get(key)

    def key(self, course_uuid: str) -> str | None:
        return self.key_of_uuid.get(course_uuid.lower())


@dataclass(frozen=True)
class PartitionChanges:
    """What bringing the course partitions up to date does: add keys for newly known courses,
    replace bare-uuid keys, retire the keys of courses no longer known (R1)."""

    add: dict[str, str]  # new key → course uuid
    replace: dict[str, str]  # bare-uuid key → its new key
    retire: list[str] = field(default_factory=list)  # keys whose course is no longer known

    @property
    def new_courses(self) -> dict[str, str]:
        """The keys added for courses that had none (not those replacing a bare uuid)."""
        replacing = set(self.replace.values())
        return {key: course for key, course in self.add.items() if key not in replacing}


def names_a_known_course(key: str, known: UuidPrefixes) -> bool:
    """Whether some known course could be the key's: a course is retired only when none can."""
    if is_bare_uuid(key):
        return bool(known.matching(_hex(key)))
    suffix = key_suffix(key)
    return bool(re.fullmatch(r"[0-9a-f]{8,32}", suffix)) and bool(known.matching(suffix))


def partition_changes(
    existing_keys: Collection[str],
    known_course_uuids: Iterable[str],
    titles: Mapping[str, str],
    every_course_uuid: Collection[str],
) -> PartitionChanges:
    """Keys to add for known courses FutureLearn lists without one, readable keys for bare-uuid
    partitions, and the keys to retire: those no known course has any more.

    `known_course_uuids` is every course the platform knows, listed or not (a known course
    FutureLearn lists no runs for keeps its partition: it is withdrawn, not retired);
    `titles` gives each course's title now (the slug is taken from it once, here);
    `every_course_uuid` is every course FutureLearn lists, known or not, so that a suffix is
    unique among all of them.
    """
    known = set(known_course_uuids)
    listed = set(every_course_uuid)
    # No course known at all is a wrong or empty database far more often than every course
    # unmapped at once: nothing is retired on its word.
    retire = (
        sorted(key for key in existing_keys if not names_a_known_course(key, UuidPrefixes(known)))
        if known
        else []
    )
    kept = [key for key in existing_keys if key not in set(retire)]
    every = UuidPrefixes(listed | known)
    readable = CourseKeys.resolve(
        [key for key in kept if not is_bare_uuid(key)], listed | known, known
    )
    keyed = set(readable.uuid_of_key.values())
    add: dict[str, str] = {}
    replace: dict[str, str] = {}
    for key in sorted(kept):
        if not is_bare_uuid(key):
            continue
        course = key.lower()
        # A migration cut short may have added the readable key already: keep that one.
        new_key = readable.key(course) or new_partition_key(course, titles.get(course, ""), every)
        replace[key] = new_key
        if course not in keyed:
            add[new_key] = course
            keyed.add(course)
    for course in sorted((known & listed) - keyed):
        add[new_partition_key(course, titles.get(course, ""), every)] = course
    return PartitionChanges(add=add, replace=replace, retire=retire)
