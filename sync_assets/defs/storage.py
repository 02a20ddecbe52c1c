"""Where asset values live between steps: one parquet file per asset partition.

A single-run backfill hands one step many course partitions and one output for all of them;
Dagster's UPathIOManager refuses that. Here a partitioned asset's value is a dict keyed by
partition, written one file per partition and read back the same way, so the nightly run (all
courses) and a rerun of one course from the UI store and load exactly the same files.

Inputs come back as a read-on-access mapping: a step that works course by course holds one
course's frames at a time, not every course's at once (on `large` that was ~650 MiB of inputs
held through the whole write loop). Outputs may be built the same way: a `PartitionSpool` writes
each course's frame to disk as soon as it is made, so a step's output for every course is never in
memory at once either.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from sync_assets.settings import data_dir

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def default_storage_dir() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home) / "storage" if home else data_dir() / "dagster_storage") / "sync_assets"


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Polars frames as parquet; partitioned assets as `{partition key: frame}`."""

    base_dir: str | None = None

    def _asset_dir(self, asset_key: dg.AssetKey) -> Path:
        root = Path(self.base_dir) if self.base_dir else default_storage_dir()
        return root.joinpath(*asset_key.path)

    def _partition_path(self, asset_key: dg.AssetKey, partition: str) -> Path:
        return self._asset_dir(asset_key) / _file_name(partition)

    def _whole_path(self, asset_key: dg.AssetKey) -> Path:
        return self._asset_dir(asset_key).with_suffix(".parquet")

    def handle_output(
        self,
        context: dg.OutputContext,
        obj: pl.DataFrame | Mapping[str, pl.DataFrame | CourseFailure],
    ) -> None:
        if not context.has_asset_partitions:
            _write(self._whole_path(context.asset_key), obj)
            return
        if not isinstance(obj, Mapping):
            raise TypeError(
                f"{context.asset_key.to_user_string()} is partitioned: return {{partition: frame}}"
            )
        missing = sorted(
            partition for partition in context.asset_partition_keys if partition not in obj
        )
        if missing:  # checked before any write: a step that forgets a course stores nothing
            raise KeyError(
                f"{context.asset_key.to_user_string()} has no value for "
                f"{len(missing)} partition(s): {', '.join(missing[:5])}"
            )
        for partition in context.asset_partition_keys:
            target = self._partition_path(context.asset_key, partition)
            if isinstance(obj, PartitionFrames):  # already parquet: copy, never load
                _copy(obj.path(partition), target)
            else:
                _write(target, obj[partition])

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | PartitionFrames:
        key = context.asset_key
        if not context.has_asset_partitions:
            return _read(self._whole_path(key), key.to_user_string())
        partitions = sorted(context.asset_partition_keys)
        paths = {partition: self._partition_path(key, partition) for partition in partitions}
        missing = [partition for partition, path in paths.items() if not path.exists()]
        if missing:  # fail at load time, naming what is missing, not halfway through a step
            raise FileNotFoundError(
                f"{key.to_user_string()} has not been materialised yet for "
                f"{len(missing)} partition(s): {', '.join(missing[:5])}"
            )
        return PartitionFrames(paths)


# A course that failed in a step is stored as a one-row frame of this one column, so that every
# later step of the run sees the failure (and its reason) instead of a course with no data.
FAILURE_COLUMN = "__course_failed__"


@dataclass(frozen=True)
class CourseFailure:
    """A step's value for a course it could not compute; the other courses go on."""

    reason: str

    def as_frame(self) -> pl.DataFrame:
        return pl.DataFrame({FAILURE_COLUMN: [self.reason]})


class CourseFailed(Exception):
    """Raised on reading a course an earlier step of the run failed."""

    def __init__(self, partition: str, reason: str) -> None:
        super().__init__(reason)
        self.partition = partition
        self.reason = reason


class PartitionFrames(Mapping[str, pl.DataFrame]):
    """`{partition: frame}` read from parquet each time a partition is asked for.

    Reading a course an earlier step failed raises `CourseFailed`; `failures()` lists them from
    the files' schemas alone, and `succeeded()` is the mapping without them.
    """

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self._paths = dict(paths)

    def __getitem__(self, partition: str) -> pl.DataFrame:
        frame = pl.read_parquet(self._paths[partition])
        if frame.columns == [FAILURE_COLUMN]:
            raise CourseFailed(partition, frame[FAILURE_COLUMN][0])
        return frame

    def failures(self) -> dict[str, str]:
        failed = {}
        for partition, path in self._paths.items():
            if list(pl.read_parquet_schema(path)) == [FAILURE_COLUMN]:
                failed[partition] = pl.read_parquet(path)[FAILURE_COLUMN][0]
        return failed

    def succeeded(self) -> PartitionFrames:
        failed = self.failures()
        return PartitionFrames({p: path for p, path in self._paths.items() if p not in failed})

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, partition: object) -> bool:
        return partition in self._paths  # without reading the file, unlike Mapping's default

    def path(self, partition: str) -> Path:
        return self._paths[partition]


class PartitionSpool(PartitionFrames):
    """An output built course by course: each frame goes to parquet under `directory` at once.

    Hand it to the IO manager as the step's output; it copies the files into storage. The
    directory must outlive the output (e.g. a TemporaryDirectory around the `yield`).
    """

    def __init__(self, directory: Path) -> None:
        super().__init__({})
        self._directory = Path(directory)

    def add(self, partition: str, frame: pl.DataFrame | CourseFailure) -> None:
        path = self._directory / _file_name(partition)
        _write(path, frame)
        self._paths[partition] = path


def _file_name(partition: str) -> str:
    name = partition if _SAFE.match(partition) else hashlib.sha256(partition.encode()).hexdigest()
    return f"{name}.parquet"


def _write(path: Path, value: pl.DataFrame | CourseFailure) -> None:
    frame = value.as_frame() if isinstance(value, CourseFailure) else value
    _replace(path, frame.write_parquet)


def _copy(source: Path, path: Path) -> None:
    _replace(path, lambda partial: shutil.copyfile(source, partial))


def _replace(path: Path, fill: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer: two runs storing the same partition at once (two syncs on
    # one DAGSTER_HOME) would otherwise move each other's file away mid-write.
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.partial")
    try:
        fill(partial)
        os.replace(partial, path)  # a reader never sees half a file; the last writer wins
    finally:
        partial.unlink(missing_ok=True)


def _read(path: Path, what: str) -> pl.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{what} has not been materialised yet ({path})")
    return pl.read_parquet(path)
