"""The IO manager between steps: one parquet object per course partition holding that course's
outcome (a frame with its stamps, a failure with its reason, or unchanged), read back per course.

Every test runs on a local folder (the embedded default) and on S3 (moto's server over loopback).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sync_assets.defs.storage import OutcomeSpool, PartitionedParquetIOManager, StoredOutcomes
from sync_assets.object_storage import ObjectStore
from sync_assets.sync.outcomes import Computed, Failed, Outcome, Unchanged

COURSES = dg.StaticPartitionsDefinition(["course-a", "course-b", "course/with:odd chars"])
KEY = dg.AssetKey("enrolments")


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where values live: a folder, or a prefix in a new S3 bucket, as SYNC_ASSETS_STORAGE_URL
    (the IO manager's only source: it has no config field for it)."""
    if request.param == "local":
        url = str(tmp_path / "storage")
    else:
        url = f"s3://{request.getfixturevalue('s3_bucket')}/nightly"
    monkeypatch.setenv("SYNC_ASSETS_STORAGE_URL", url)
    return url


def _stored(storage: str) -> list[str]:
    return ObjectStore(storage).keys()


def _frames() -> dict[str, pl.DataFrame]:
    return {
        course: pl.DataFrame({"membership_uuid": [f"{course}-{i}" for i in range(n)]})
        for n, course in enumerate(COURSES.get_partition_keys(), start=1)
    }


def _computed(frames: Mapping[str, pl.DataFrame]) -> dict[str, Outcome]:
    return {course: Computed(frame) for course, frame in frames.items()}


def _store(
    manager: PartitionedParquetIOManager,
    frames: Mapping[str, Outcome],
    first: str = "course-a",
    last: str = "course/with:odd chars",
) -> None:
    with dg.build_output_context(
        asset_key=KEY,
        asset_partition_key_range=dg.PartitionKeyRange(first, last),
        asset_partitions_def=COURSES,
    ) as context:
        manager.handle_output(context, frames)


def _load(manager: PartitionedParquetIOManager, courses: list[str]) -> StoredOutcomes:
    with dg.build_input_context(
        asset_key=KEY,
        asset_partition_key_range=dg.PartitionKeyRange(courses[0], courses[-1]),
        asset_partitions_def=COURSES,
    ) as context:
        return manager.load_input(context)


def test_many_courses_written_by_one_step_read_back_course_by_course(storage: str) -> None:
    manager = PartitionedParquetIOManager()
    frames = _frames()
    _store(manager, _computed(frames))

    loaded = _load(manager, list(frames))

    assert sorted(loaded) == sorted(frames)
    assert len(loaded) == len(frames)
    for course, frame in frames.items():
        assert_frame_equal(loaded.frame(course), frame)
    assert dict(loaded.items()).keys() == frames.keys()
    # One object per course partition, named after it (a name unsafe as a key is hashed).
    stored = _stored(storage)
    assert len(stored) == 3
    assert {"enrolments/course-a.parquet", "enrolments/course-b.parquet"} < set(stored)


def test_a_step_that_forgets_a_course_stores_none_of_its_courses(storage: str) -> None:
    manager = PartitionedParquetIOManager()
    frames = _frames()
    del frames["course-b"]

    with pytest.raises(KeyError, match=r"enrolments .* 1 partition\(s\): course-b"):
        _store(manager, _computed(frames))

    with pytest.raises(FileNotFoundError, match=r"3 partition\(s\)"):
        _load(manager, list(COURSES.get_partition_keys()))
    assert _stored(storage) == []


def test_a_course_never_materialised_is_named_when_the_step_loads(storage: str) -> None:
    manager = PartitionedParquetIOManager()
    _store(manager, {"course-a": Computed(_frames()["course-a"])}, "course-a", "course-a")

    assert_frame_equal(_load(manager, ["course-a"]).frame("course-a"), _frames()["course-a"])
    with pytest.raises(
        FileNotFoundError,
        match=r"enrolments has not been materialised yet for 2 partition\(s\): "
        r"course-b, course/with:odd chars",
    ):
        _load(manager, list(COURSES.get_partition_keys()))


def test_a_spooled_output_is_stored_like_a_dict_and_outlives_its_spool(
    storage: str, tmp_path: Path
) -> None:
    manager = PartitionedParquetIOManager()
    frames = _frames()
    spool = OutcomeSpool(tmp_path / "spool")
    for course, frame in frames.items():
        spool.add(course, Computed(frame, {"report_fingerprint": f"of {course}"}))

    _store(manager, spool)
    for spooled in (tmp_path / "spool").iterdir():
        spooled.unlink()  # the step's temporary directory is gone once the output is stored

    loaded = _load(manager, list(frames))
    for course, frame in frames.items():
        outcome = loaded[course]
        assert isinstance(outcome, Computed)
        assert outcome.stamps == {"report_fingerprint": f"of {course}"}
        assert_frame_equal(loaded.frame(course), frame)


def test_a_spool_missing_a_course_stores_none_of_its_courses(storage: str, tmp_path: Path) -> None:
    manager = PartitionedParquetIOManager()
    spool = OutcomeSpool(tmp_path / "spool")
    for course, frame in _frames().items():
        if course != "course-a":
            spool.add(course, Computed(frame))

    assert "course-a" not in spool and "course-b" in spool
    with pytest.raises(KeyError, match=r"1 partition\(s\): course-a"):
        _store(manager, spool)
    assert _stored(storage) == []


def test_two_writers_of_one_partition_at_once_both_succeed(storage: str) -> None:
    """Two syncs on one DAGSTER_HOME store the same course at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    from sync_assets.defs.storage import _read, _write

    store = ObjectStore(storage)
    frames = [pl.DataFrame({"writer": [n] * 1000}) for n in range(2)]

    def write(n: int) -> None:
        for _ in range(20):
            _write(store, "course.parquet", Computed(frames[n]))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(2)))  # raised FileNotFoundError with one partial file name

    assert _read(store, "course.parquet")["writer"].n_unique() == 1
    assert store.keys() == ["course.parquet"]


def test_a_writer_that_fails_midway_leaves_the_stored_value_whole(storage: str) -> None:
    from sync_assets.defs.storage import _read, _write

    store = ObjectStore(storage)
    before = pl.DataFrame({"progress": [10, 20]})
    _write(store, "course.parquet", Computed(before))

    def half_then_fail(path: Path) -> None:
        path.write_bytes(b"PAR1 half a parquet file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("course.parquet", half_then_fail)

    assert_frame_equal(_read(store, "course.parquet"), before)
    assert store.keys() == ["course.parquet"]


def test_a_failed_course_reads_back_as_its_failure_known_from_its_footer(storage: str) -> None:
    from sync_assets.defs.storage import _write

    store = ObjectStore(storage)
    _write(store, "good.parquet", Computed(pl.DataFrame({"a": [1]}), {"linking_generation": "7"}))
    _write(store, "bad.parquet", Failed("report of run r: HTTP 500"))
    outcomes = StoredOutcomes(store, {"good": "good.parquet", "bad": "bad.parquet"})

    assert outcomes.failures() == {"bad": "report of run r: HTTP 500"}
    assert outcomes.computed() == {"good"}
    assert outcomes["bad"] == Failed("report of run r: HTTP 500")
    assert outcomes["good"].stamps == {"linking_generation": "7"}  # type: ignore[union-attr]
    assert list(outcomes.frames()) == ["good"]
    with pytest.raises(ValueError, match="course bad has no frame: Failed"):
        outcomes.frame("bad")
    # Renamed (partition keys to course uuids), the same objects answer under the new names.
    renamed = outcomes.renamed({"bad": "uuid-b"})
    assert list(renamed) == ["uuid-b"] and renamed.failures() == {
        "uuid-b": "report of run r: HTTP 500"
    }


def test_a_course_skipped_as_unchanged_keeps_its_last_data_for_readers_outside_a_run(
    storage: str, tmp_path: Path
) -> None:
    manager = PartitionedParquetIOManager()
    frames = _frames()
    _store(manager, _computed(frames))
    skipped = "course-b"
    spool = OutcomeSpool(tmp_path / "spool")
    for course, frame in frames.items():
        spool.add(course, Unchanged() if course == skipped else Computed(frame))
    _store(manager, spool)  # a night that skipped course-b

    loaded = _load(manager, list(frames))
    assert loaded.unchanged() == {skipped}  # later steps of a run see the skip
    assert loaded[skipped] == Unchanged()
    last = manager.stored_outcome(KEY.path[-1], skipped)  # explain's data
    assert isinstance(last, Computed)
    assert_frame_equal(last.frame, frames[skipped])

    _store(manager, _computed(frames))  # a night on which course-b changed again
    loaded = _load(manager, list(frames))
    assert loaded.unchanged() == set()
    assert_frame_equal(loaded.frame(skipped), frames[skipped])


def test_an_unpartitioned_value_round_trips(storage: str) -> None:
    manager = PartitionedParquetIOManager()
    frame = pl.DataFrame({"course_uuid": ["c-1", "c-2"]})
    with dg.build_output_context(asset_key=dg.AssetKey("course_runs")) as context:
        manager.handle_output(context, frame)
    with dg.build_input_context(asset_key=dg.AssetKey("course_runs")) as context:
        assert_frame_equal(manager.load_input(context), frame)
    assert _stored(storage) == ["course_runs.parquet"]


def test_credentials_in_the_storage_url_are_refused_in_one_line() -> None:
    from sync_assets.settings import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        ObjectStore("s3://AKIAEXAMPLE:a-secret@bucket/prefix")
    assert "a-secret" not in str(refused.value)
    assert str(refused.value).startswith("SYNC_ASSETS_STORAGE_URL: s3://…: credentials do not")
