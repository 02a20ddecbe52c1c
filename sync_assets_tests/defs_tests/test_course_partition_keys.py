"""Course partitions found by title: readable keys, stable, the old ones migrated."""

from __future__ import annotations

import random
import uuid as uuid_module

import dagster as dg
import polars as pl

from sync_assets.definitions import defs
from sync_assets.defs.storage import PartitionedParquetIOManager
from sync_assets.defs.sync.jobs import all_partitions_tags
from sync_assets.defs.sync.partitions import (
    CourseKeys,
    course_partitions,
    is_bare_uuid,
    new_partition_key,
    partition_changes,
    slugify,
)
from sync_assets.defs.sync.sensors import (
    PARTITIONED_ASSETS,
    course_partitions_sensor,
    remove_retired_bare_uuid_objects,
)
from sync_assets.platform.demo_catalogue import load_catalogue
from sync_assets.sync.steps import course_titles
from sync_assets.wording import counted
from sync_assets_tests.conftest import sqlite_only

from .conftest import World

CATALOGUE = {c["future_learn_course_uuid"] for c in load_catalogue()}
ASSET_NAMES = [key.to_user_string() for key in PARTITIONED_ASSETS]
A = "3f2a9c1d-0000-4000-8000-00000000000a"
B = "3f2a9c1d-7777-4000-8000-00000000000b"  # shares A's first 8 digits
C = "c0ffee00-1111-4000-8000-00000000000c"


def test_a_key_is_the_titles_slug_and_the_start_of_the_uuid() -> None:
    assert slugify("Teaching Programming in Primary Schools") == (
        "teaching-programming-in-primary-schools"
    )
    assert slugify("Programación: ¿por qué?  Über-Kurs!") == "programacion-por-que-uber-kurs"
    long = slugify("Representing Data with Images and Sound: Bringing Data to Life")
    assert long == "representing-data-with-images-and-sound-bringing"  # cut between words
    assert slugify("???") == "course"
    assert new_partition_key(C, "Object-oriented Programming", [A, C]) == (
        "object-oriented-programming-c0ffee00"
    )


def test_a_suffix_is_long_enough_to_name_one_course() -> None:
    key_a = new_partition_key(A, "Course A", [A, B, C])
    key_b = new_partition_key(B, "Course B", [A, B, C])
    assert key_a == "course-a-3f2a9c1d0000" and key_b == "course-b-3f2a9c1d7777"
    keys = CourseKeys.resolve([key_a, key_b, "course-c-c0ffee00"], [A, B, C])
    assert keys.uuid_of_key == {key_a: A, key_b: B, "course-c-c0ffee00": C}
    assert keys.key(C) == "course-c-c0ffee00"


def test_an_old_key_keeps_its_course_when_a_later_course_shares_its_digits() -> None:
    old = new_partition_key(A, "Course A", [A, C])  # before B was listed
    assert old == "course-a-3f2a9c1d"
    later = new_partition_key(B, "Course B", [A, B, C])
    assert CourseKeys.resolve([old, later], [A, B, C]).uuid_of_key == {old: A, later: B}
    # B listed but without a partition yet (unknown to the platform): the known course wins.
    assert CourseKeys.resolve([old], [A, B, C], known={A}).uuid_of_key == {old: A}
    assert CourseKeys.resolve([old], [A, B, C]).uuid_of_key == {}  # ambiguous: left out


def test_a_large_catalogue_with_shared_digits_gets_unique_keys_that_resolve_back() -> None:
    # 3,000 courses, a third of them sharing their first 8 or 12 digits with another: every key
    # is as short as the rule allows and names its own course (found by bisection, not by
    # scanning every course for every key).
    rng = random.Random(7)
    uuids: list[str] = []
    for _ in range(1_000):
        digits = f"{rng.getrandbits(128):032x}"
        uuids.append(str(uuid_module.UUID(digits)))
        for shared in (8, 12):
            twin = digits[:shared] + f"{rng.getrandbits(128):032x}"[shared:]
            uuids.append(str(uuid_module.UUID(twin)))
    changes = partition_changes([], uuids, {u: "T" for u in uuids}, uuids)
    assert sorted(changes.add.values()) == sorted(uuids) and len(changes.add) == len(uuids)
    for key, course in changes.add.items():
        suffix = key.rsplit("-", 1)[1]
        others = [u.replace("-", "") for u in uuids if u != course]
        assert not any(other.startswith(suffix) for other in others)  # unique
        assert any(other.startswith(suffix[:-4]) for other in others) or len(suffix) == 8  # short
    assert CourseKeys.resolve(list(changes.add), uuids).uuid_of_key == changes.add


def test_a_renamed_course_keeps_its_key() -> None:
    existing = ["course-a-3f2a9c1d"]
    changes = partition_changes(existing, [A], {A: "A New Name"}, [A, C])
    assert changes.add == {} and changes.replace == {}


def test_bare_uuid_partitions_get_readable_keys_once() -> None:
    changes = partition_changes([A, "course-c-c0ffee00"], [A, C], {A: "Course A"}, [A, C])
    assert changes.replace == {A: "course-a-3f2a9c1d"}
    assert changes.add == {"course-a-3f2a9c1d": A}
    # Cut short after adding the new key: finished without a second key.
    again = partition_changes([A, "course-a-3f2a9c1d"], [A], {A: "Renamed"}, [A, C])
    assert again.replace == {A: "course-a-3f2a9c1d"} and again.add == {}
    assert is_bare_uuid(A) and not is_bare_uuid("course-a-3f2a9c1d")


def test_partitions_follow_the_known_courses() -> None:
    """R1: a key is retired only when no known course can be its course; a withdrawn course
    (known, not listed) keeps its key; a database that knows no course retires nothing."""
    key_a, key_c = "course-a-3f2a9c1d", "course-c-c0ffee00"
    withdrawn = partition_changes([key_a, key_c], [A, C], {C: "Course C"}, [C])
    assert withdrawn.retire == [] and withdrawn.add == {}
    unmapped = partition_changes([key_a, key_c], [C], {A: "Course A", C: "Course C"}, [A, C])
    assert unmapped.retire == [key_a] and unmapped.add == {}
    # B is known and shares A's first 8 digits: A's old key may still name a known course, and
    # is kept, whether A is known too or not.
    assert partition_changes([key_a], [A, B], {}, [A, B]).retire == []
    assert partition_changes([key_a], [B], {}, [A, B]).retire == []
    assert partition_changes([key_a, "no-digits"], [], {}, [A]).retire == []
    assert partition_changes([key_a, "no-digits"], [C], {}, [A, C]).retire == [key_a, "no-digits"]
    # A bare-uuid partition of a course no longer known is retired, not migrated.
    bare = partition_changes([A, key_c], [C], {A: "Course A"}, [A, C])
    assert bare.retire == [A] and bare.replace == {} and bare.add == {}
    # A new known course: its key is added, and it is new (not a migration's).
    added = partition_changes([key_c], [A, C], {A: "Course A"}, [A, C])
    assert added.new_courses == added.add == {key_a: A}


# The instance's partitions and the stored outputs are the whole check: the platform database
# only takes the sync's writes, as in every other sync test on PostgreSQL.
@sqlite_only
def test_bare_uuid_partitions_are_migrated_with_what_they_store(world: World) -> None:
    """An instance of an earlier version: partitions keyed by uuid, outputs stored under them."""
    courses = sorted(set(world.dataset.runs["course_uuid"]) & CATALOGUE)
    io_manager = PartitionedParquetIOManager()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(course_partitions.name, courses)
        result = defs.resolve_job_def("futurelearn_sync").execute_in_process(
            instance=instance, tags=all_partitions_tags(courses)
        )
        assert result.success
        before = world.snapshot()
        store = io_manager._store()
        old_values = {
            (asset, course): pl.read_parquet(store.local_path(f"{asset}/{course}.parquet"))
            for asset in ASSET_NAMES
            for course in courses
        }
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            skipped = course_partitions_sensor(context)
        keys = instance.get_dynamic_partitions(course_partitions.name)
        history = {
            (asset, key): instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]),
                limit=1,
            ).records
            for asset in ASSET_NAMES
            for key in keys
        }

    replaced = counted(len(courses), "bare-uuid partition")
    assert skipped.skip_message == f"{replaced} given readable keys"
    titles = course_titles(world.dataset.runs)
    mapping = CourseKeys.resolve(keys, world.dataset.runs["course_uuid"]).uuid_of_key
    assert not [key for key in keys if is_bare_uuid(key)]
    assert sorted(mapping.values()) == courses
    for key, course in mapping.items():
        assert key.startswith(slugify(titles[course]))
        for asset in ASSET_NAMES:
            old = old_values[(asset, course)]
            assert pl.read_parquet(store.local_path(f"{asset}/{key}.parquet")).equals(old)
            # Moved, not copied: no learner's data is left under a key no partition has.
            assert not store.exists(f"{asset}/{course}.parquet")
            [record] = history[(asset, key)]
            assert not record.run_id  # recorded without a run
            metadata = record.asset_materialization.metadata
            assert metadata["migrated_from_partition"].value == course
            assert metadata["course_title"].value == titles[course]

    # What an earlier release's migration left (it copied, never deleted) goes on the next
    # check; a bare-uuid partition that still exists keeps what it stores.
    course, other = courses[0], courses[1]
    asset = PARTITIONED_ASSETS[0]
    left_behind = f"{ASSET_NAMES[0]}/{course}.parquet"
    store.copy(f"{ASSET_NAMES[0]}/{world.key(course)}.parquet", left_behind)
    with dg.DagsterInstance.get() as instance:
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            course_partitions_sensor(context)
        assert not store.exists(left_behind)
        # (Mid-migration, as the sensor is about to move it: the sweep alone leaves it.)
        instance.add_dynamic_partitions(course_partitions.name, [other])
        io_manager.copy_partition(asset, world.key(other), other)
        remove_retired_bare_uuid_objects(instance, io_manager)
        assert store.exists(f"{ASSET_NAMES[0]}/{other}.parquet")
        io_manager.delete_partition(asset, other)
        instance.delete_dynamic_partition(course_partitions.name, other)

    # The CLI takes a course by uuid or by key; the rerun finds nothing to change.
    by_uuid = world.sync("--course", course)
    by_key = world.sync("--course", world.key(course))
    assert by_uuid.exit_code == 0 and by_key.exit_code == 0, by_uuid.output + by_key.output
    assert f"{world.key(course)}  {titles[course][:39]}" in by_key.output
    # (The command's certificate work then handles the first sync's completion events.)
    for table in ("future_learn_memberships", "achievements", "achievement_transitions"):
        assert world.table(table) == before[table], table
    unknown = world.sync("--course", "no-such-course-12345678")
    assert unknown.exit_code != 0
    assert "neither a course partition key nor the uuid of a known course" in unknown.output
