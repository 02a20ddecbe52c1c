"""Where asset values live between steps: one parquet object per asset partition.

A single-run backfill hands one step many course partitions and one output for all of them;
Dagster's UPathIOManager refuses that. Here a partitioned asset's value is a dict keyed by
partition, written one file per partition and read back the same way, so the nightly run (all
courses) and a rerun of one course from the UI store and load exactly the same files.

Inputs come back as a read-on-access mapping: a step that works course by course holds one
course's frames at a time, not every course's at once (on `large` that was ~650 MiB of inputs
held through the whole write loop). Outputs may be built the same way: a `PartitionSpool` writes
each course's frame to disk as soon as it is made, so a step's output for every course is never in
memory at once either.

The objects live in an `ObjectStore`: a local folder (the embedded default) or object storage
such as S3 (`SYNC_ASSETS_STORAGE_URL`), so a rerun or a retry in another container finds them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from sync_assets.object_storage import ObjectStore
from sync_assets.settings import storage_url

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Polars frames as parquet; partitioned assets as `{partition key: frame}`.

    Stored at SYNC_ASSETS_STORAGE_URL (a folder or an fsspec URL such as s3://bucket/prefix;
    locally $DAGSTER_HOME/storage/sync_assets), read from the environment when used: no config
    field, so run config cannot make a run read or write another folder or bucket.
    """

    def _store(self) -> ObjectStore:
        return ObjectStore(storage_url())

    @staticmethod
    def _partition_key(asset_key: dg.AssetKey, partition: str) -> str:
        return "/".join([*asset_key.path, _file_name(partition)])

    @staticmethod
    def _unchanged_key(asset_key: dg.AssetKey, partition: str) -> str:
        """Where a step notes it skipped a course as unchanged, beside the course's last data:
        that stays where it was, for readers outside a run (`sync-assets explain`)."""
        return "/".join([*asset_key.path, UNCHANGED_FOLDER, _file_name(partition)])

    @staticmethod
    def _whole_key(asset_key: dg.AssetKey) -> str:
        return "/".join(asset_key.path) + ".parquet"

    def copy_partition(self, asset_key: dg.AssetKey, partition: str, new_partition: str) -> bool:
        """Store a partition's value under another partition key too; False if none is stored."""
        store = self._store()
        copied = False
        for name in (self._partition_key, self._unchanged_key):
            source = name(asset_key, partition)
            if store.exists(source):
                store.copy(source, name(asset_key, new_partition))
                copied = True
        return copied

    def delete_partition(self, asset_key: dg.AssetKey, partition: str) -> None:
        """Remove what is stored under a partition key (its value and its unchanged marker): a
        key retired by re-keying leaves no copy of learners' data behind it."""
        store = self._store()
        for name in (self._partition_key, self._unchanged_key):
            store.delete(name(asset_key, partition))

    def stored_partitions(self, asset_key: dg.AssetKey) -> set[str]:
        """The partition keys something is stored under for an asset (a value or a marker), as
        their object names give them (a key unsafe as a name appears as its digest)."""
        prefix = "/".join(asset_key.path) + "/"
        return {
            key.rsplit("/", 1)[-1].removesuffix(".parquet")
            for key in self._store().keys(prefix)
            if key.endswith(".parquet")
        }

    def stored(self, asset: str, partition: str | None = None) -> pl.DataFrame | None:
        """The value last stored for an asset (one partition of it), or None if there is none.

        For readers outside a run (`sync-assets explain`): what the next step would load. A
        course an earlier step failed reads as its one-column failure frame (FAILURE_COLUMN).
        """
        store = self._store()
        key = dg.AssetKey(asset)
        name = self._partition_key(key, partition) if partition else self._whole_key(key)
        return _read(store, name) if store.exists(name) else None

    def handle_output(
        self,
        context: dg.OutputContext,
        obj: pl.DataFrame | Mapping[str, pl.DataFrame | CourseFailure | CourseUnchanged],
    ) -> None:
        store = self._store()
        if not context.has_asset_partitions:
            _write(store, self._whole_key(context.asset_key), obj)
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
        spooled_unchanged = obj.unchanged() if isinstance(obj, PartitionSpool) else set()
        for partition in context.asset_partition_keys:
            target = self._partition_key(context.asset_key, partition)
            marker = self._unchanged_key(context.asset_key, partition)
            value = None if isinstance(obj, PartitionSpool) else obj[partition]
            if partition in spooled_unchanged or isinstance(value, CourseUnchanged):
                _write(store, marker, CourseUnchanged())
                continue
            # The marker goes first: a crash before the new value is stored leaves the old data
            # and no marker, so the course is recomputed, never wrongly skipped.
            store.delete(marker)
            if isinstance(obj, PartitionSpool):  # already parquet on local disk: upload as is
                store.put(obj.path(partition), target)
            else:
                _write(store, target, value)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | PartitionFrames:
        key = context.asset_key
        store = self._store()
        if not context.has_asset_partitions:
            whole = self._whole_key(key)
            if not store.exists(whole):
                raise FileNotFoundError(
                    f"{key.to_user_string()} has not been materialised yet ({store.url}/{whole})"
                )
            return _read(store, whole)
        keys: dict[str, str] = {}
        missing = []
        for partition in sorted(context.asset_partition_keys):
            marker = self._unchanged_key(key, partition)
            data = self._partition_key(key, partition)
            if store.exists(marker):  # skipped as unchanged by the step that made it
                keys[partition] = marker
            elif store.exists(data):
                keys[partition] = data
            else:
                missing.append(partition)
        if missing:  # fail at load time, naming what is missing, not halfway through a step
            raise FileNotFoundError(
                f"{key.to_user_string()} has not been materialised yet for "
                f"{len(missing)} partition(s): {', '.join(missing[:5])} (in {store.url})"
            )
        return PartitionFrames(store, keys)


# A course that failed in a step is stored as a one-row frame of this one column, so that every
# later step of the run sees the failure (and its reason) instead of a course with no data.
FAILURE_COLUMN = "__course_failed__"
# A course skipped as unchanged, likewise: a one-row marker that later steps load in place of its
# frame, so that no step writes, reads or parses the course's data on a night nothing changed for
# it. The marker is stored in a folder of its own (`_unchanged_key`), beside the last frame.
UNCHANGED_COLUMN = "__course_unchanged__"
UNCHANGED_FOLDER = "_unchanged"


@dataclass(frozen=True)
class CourseFailure:
    """A step's value for a course it could not compute; the other courses go on."""

    reason: str

    def as_frame(self) -> pl.DataFrame:
        return pl.DataFrame({FAILURE_COLUMN: [self.reason]})


@dataclass(frozen=True)
class CourseUnchanged:
    """A step's value for a course skipped as unchanged since its last successful sync."""

    reason: str = "skipped as unchanged"

    def as_frame(self) -> pl.DataFrame:
        return pl.DataFrame({UNCHANGED_COLUMN: [self.reason]})


@dataclass(frozen=True)
class StampedFrame:
    """A frame stored with string notes in its parquet footer (`PartitionFrames.stamps`): what a
    later step needs to know of how the frame was made without reading it."""

    frame: pl.DataFrame
    stamps: dict[str, str]


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

    def __init__(self, store: ObjectStore, keys: Mapping[str, str]) -> None:
        self._store = store
        self._keys = dict(keys)
        self._schemas: dict[str, list[str]] = {}  # read once: a footer per object

    def __getitem__(self, partition: str) -> pl.DataFrame:
        frame = _read(self._store, self._keys[partition])
        if frame.columns == [FAILURE_COLUMN]:
            raise CourseFailed(partition, frame[FAILURE_COLUMN][0])
        if frame.columns == [UNCHANGED_COLUMN]:
            raise CourseFailed(partition, f"no data: {frame[UNCHANGED_COLUMN][0]}")
        return frame

    def _columns(self, partition: str) -> list[str]:
        if partition not in self._schemas:
            self._schemas[partition] = _schema(self._store, self._keys[partition])
        return self._schemas[partition]

    def failures(self) -> dict[str, str]:
        failed = {}
        for partition, key in self._keys.items():
            if self._columns(partition) == [FAILURE_COLUMN]:
                failed[partition] = _read(self._store, key)[FAILURE_COLUMN][0]
        return failed

    def unchanged(self) -> set[str]:
        """Partitions skipped as unchanged by the step that made them (a marker, no data)."""
        return {p for p in self._keys if self._columns(p) == [UNCHANGED_COLUMN]}

    def succeeded(self) -> PartitionFrames:
        """The partitions with data: neither failed nor skipped as unchanged."""
        failed = self.failures()
        unchanged = self.unchanged()
        kept = PartitionFrames(
            self._store,
            {p: key for p, key in self._keys.items() if p not in failed and p not in unchanged},
        )
        kept._schemas = {p: c for p, c in self._schemas.items() if p in kept._keys}
        return kept

    def stamps(self, partition: str) -> dict[str, str]:
        """The notes a `StampedFrame` was stored with (none for a plain frame)."""
        key = self._keys[partition]
        if self._store.is_local:
            return _stamps(pl.read_parquet_metadata(self._store.local_path(key)))
        with self._store.open(key) as source:
            return _stamps(pl.read_parquet_metadata(source))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, partition: object) -> bool:
        return partition in self._keys  # without reading the object, unlike Mapping's default


class PartitionSpool(PartitionFrames):
    """An output built course by course: each frame goes to parquet under `directory` at once.

    Hand it to the IO manager as the step's output; it copies the files into storage. The
    directory must outlive the output (e.g. a TemporaryDirectory around the `yield`).
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(ObjectStore(Path(directory)), {})

    def add(self, partition: str, frame: pl.DataFrame | CourseFailure | CourseUnchanged) -> None:
        key = _file_name(partition)
        _write(self._store, key, frame)
        self._keys[partition] = key

    def path(self, partition: str) -> Path:
        return self._store.local_path(self._keys[partition])


def _file_name(partition: str) -> str:
    name = partition if _SAFE.match(partition) else hashlib.sha256(partition.encode()).hexdigest()
    return f"{name}.parquet"


_STAMP_PREFIX = "sync_assets:"


def _write(
    store: ObjectStore,
    key: str,
    value: pl.DataFrame | CourseFailure | CourseUnchanged | StampedFrame,
) -> None:
    if isinstance(value, StampedFrame):
        notes = {_STAMP_PREFIX + name: note for name, note in value.stamps.items()}
        store.write(key, lambda path: value.frame.write_parquet(path, metadata=notes))
        return
    frame = value.as_frame() if isinstance(value, CourseFailure | CourseUnchanged) else value
    store.write(key, frame.write_parquet)


def _stamps(metadata: Mapping[str, str]) -> dict[str, str]:
    return {
        name.removeprefix(_STAMP_PREFIX): note
        for name, note in metadata.items()
        if name.startswith(_STAMP_PREFIX)
    }


def _read(store: ObjectStore, key: str) -> pl.DataFrame:
    if store.is_local:
        return pl.read_parquet(store.local_path(key))
    with store.open(key) as source:
        return pl.read_parquet(source)


def _schema(store: ObjectStore, key: str) -> list[str]:
    if store.is_local:
        return list(pl.read_parquet_schema(store.local_path(key)))
    with store.open(key) as source:  # the footer only: a ranged read, not the whole object
        return list(pl.read_parquet_schema(source))
