"""The IO manager between steps: one parquet file per course partition, read back per course."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sync_assets.defs.storage import PartitionedParquetIOManager, PartitionSpool

COURSES = dg.StaticPartitionsDefinition(["course-a", "course-b", "course/with:odd chars"])
KEY = dg.AssetKey("enrolments")


def _frames() -> dict[str, pl.DataFrame]:
    return {
        course: pl.DataFrame({"membership_uuid": [f"{course}-{i}" for i in range(n)]})
        for n, course in enumerate(COURSES.get_partition_keys(), start=1)
    }


def _store(
    manager: PartitionedParquetIOManager,
    frames: Mapping[str, pl.DataFrame],
    first: str = "course-a",
    last: str = "course/with:odd chars",
) -> None:
    with dg.build_output_context(
        asset_key=KEY,
        asset_partition_key_range=dg.PartitionKeyRange(first, last),
        asset_partitions_def=COURSES,
    ) as context:
        manager.handle_output(context, frames)


def _load(manager: PartitionedParquetIOManager, courses: list[str]):
    with dg.build_input_context(
        asset_key=KEY,
        asset_partition_key_range=dg.PartitionKeyRange(courses[0], courses[-1]),
        asset_partitions_def=COURSES,
    ) as context:
        return manager.load_input(context)


def test_many_courses_written_by_one_step_read_back_course_by_course(tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager(base_dir=str(tmp_path))
    frames = _frames()
    _store(manager, frames)

    loaded = _load(manager, list(frames))

    assert sorted(loaded) == sorted(frames)
    assert len(loaded) == len(frames)
    for course, frame in frames.items():
        assert_frame_equal(loaded[course], frame)
    assert dict(loaded.items()).keys() == frames.keys()


def test_a_step_that_forgets_a_course_stores_none_of_its_courses(tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager(base_dir=str(tmp_path))
    frames = _frames()
    del frames["course-b"]

    with pytest.raises(KeyError, match=r"enrolments .* 1 partition\(s\): course-b"):
        _store(manager, frames)

    with pytest.raises(FileNotFoundError, match=r"3 partition\(s\)"):
        _load(manager, list(COURSES.get_partition_keys()))


def test_a_course_never_materialised_is_named_when_the_step_loads(tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager(base_dir=str(tmp_path))
    _store(manager, {"course-a": _frames()["course-a"]}, first="course-a", last="course-a")

    assert_frame_equal(_load(manager, ["course-a"])["course-a"], _frames()["course-a"])
    with pytest.raises(
        FileNotFoundError,
        match=r"enrolments has not been materialised yet for 2 partition\(s\): "
        r"course-b, course/with:odd chars",
    ):
        _load(manager, list(COURSES.get_partition_keys()))


def test_a_spooled_output_is_stored_like_a_dict_and_outlives_its_spool(tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager(base_dir=str(tmp_path / "storage"))
    frames = _frames()
    spool = PartitionSpool(tmp_path / "spool")
    for course, frame in frames.items():
        spool.add(course, frame)

    _store(manager, spool)
    for spooled in (tmp_path / "spool").iterdir():
        spooled.unlink()  # the step's temporary directory is gone once the output is stored

    loaded = _load(manager, list(frames))
    for course, frame in frames.items():
        assert_frame_equal(loaded[course], frame)


def test_a_spool_missing_a_course_stores_none_of_its_courses(tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager(base_dir=str(tmp_path / "storage"))
    spool = PartitionSpool(tmp_path / "spool")
    for course, frame in _frames().items():
        if course != "course-a":
            spool.add(course, frame)

    assert "course-a" not in spool and "course-b" in spool
    with pytest.raises(KeyError, match=r"1 partition\(s\): course-a"):
        _store(manager, spool)
    assert not (tmp_path / "storage").exists()


def test_two_writers_of_one_partition_at_once_both_succeed(tmp_path: Path) -> None:
    """Two syncs on one DAGSTER_HOME store the same course at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    from sync_assets.defs.storage import _write

    target = tmp_path / "course.parquet"
    frames = [pl.DataFrame({"writer": [n] * 1000}) for n in range(2)]

    def write(n: int) -> None:
        for _ in range(50):
            _write(target, frames[n])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(2)))  # raised FileNotFoundError with one partial file name

    assert pl.read_parquet(target)["writer"].n_unique() == 1
    assert [path.name for path in tmp_path.iterdir()] == ["course.parquet"]


def test_a_failed_course_reads_back_as_its_failure(tmp_path: Path) -> None:
    from sync_assets.defs.storage import CourseFailed, CourseFailure, PartitionFrames, _write

    _write(tmp_path / "good.parquet", pl.DataFrame({"a": [1]}))
    _write(tmp_path / "bad.parquet", CourseFailure("report of run r: HTTP 500"))
    frames = PartitionFrames({"good": tmp_path / "good.parquet", "bad": tmp_path / "bad.parquet"})

    assert frames.failures() == {"bad": "report of run r: HTTP 500"}
    assert list(frames.succeeded()) == ["good"]
    with pytest.raises(CourseFailed, match="HTTP 500"):
        frames["bad"]
