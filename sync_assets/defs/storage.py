"""Where asset values live between steps: one parquet object per asset partition.

A single-run backfill hands one step many course partitions and one output for all of them;
Dagster's UPathIOManager refuses that. Here a partitioned asset's value is `{partition key:
Outcome}` (sync/outcomes.py: a frame, a failure, or unchanged), written one object per partition
and read back the same way, so the nightly run (all courses) and a rerun of one course from the
UI store and load exactly the same objects.

Inputs come back as a read-on-access mapping (`StoredOutcomes`): a step that works course by
course holds one course's frames at a time, not every course's at once (on `large` that was
~650 MiB of inputs held through the whole write loop). Outputs are built the same way: an
`OutcomeSpool` writes each course's outcome to disk as soon as it is made.

The objects live in an `ObjectStore`: a local folder (the embedded default) or object storage
such as S3 (`SYNC_ASSETS_STORAGE_URL`), so a rerun or a retry in another container finds them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg
import polars as pl

from sync_assets.object_storage import ObjectStore
from sync_assets.settings import storage_url
from sync_assets.sync.outcomes import Computed, Failed, Outcome, Outcomes, Unchanged

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Polars frames as parquet; partitioned assets as `{partition key: Outcome}`.

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

    def stored(self, asset: str) -> pl.DataFrame | None:
        """The frame last stored for an unpartitioned asset, or None if there is none."""
        store = self._store()
        name = self._whole_key(dg.AssetKey(asset))
        return _read(store, name) if store.exists(name) else None

    def stored_outcome(self, asset: str, partition: str) -> Computed | Failed | None:
        """What the last step that computed one partition of an asset stored for it, or None.

        For readers outside a run (`sync-assets explain`): a course skipped as unchanged since
        reads as its last frame, which is what the next step of a run would use.
        """
        store = self._store()
        name = self._partition_key(dg.AssetKey(asset), partition)
        if not store.exists(name):
            return None
        outcome = StoredOutcomes(store, {partition: name})[partition]
        assert not isinstance(outcome, Unchanged)  # a marker is stored beside, never here
        return outcome

    def handle_output(
        self, context: dg.OutputContext, obj: pl.DataFrame | Mapping[str, Outcome]
    ) -> None:
        store = self._store()
        if not context.has_asset_partitions:
            store.write(self._whole_key(context.asset_key), obj.write_parquet)
            return
        if not isinstance(obj, Mapping):
            raise TypeError(
                f"{context.asset_key.to_user_string()} is partitioned: return "
                "{partition: Outcome}"
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
            target = self._partition_key(context.asset_key, partition)
            marker = self._unchanged_key(context.asset_key, partition)
            if isinstance(obj, OutcomeSpool) and obj.kind(partition) is not Unchanged:
                # Already parquet on local disk: the marker goes, then the file is uploaded.
                store.delete(marker)
                store.put(obj.path(partition), target)
                continue
            outcome = obj[partition]
            if isinstance(outcome, Unchanged):
                # Beside the course's last data, which stays for readers outside a run.
                _write(store, marker, outcome)
                continue
            # The marker goes first: a crash before the new value is stored leaves the old data
            # and no marker, so the course is recomputed, never wrongly skipped.
            store.delete(marker)
            _write(store, target, outcome)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | StoredOutcomes:
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
        return StoredOutcomes(store, keys)


# A course skipped as unchanged is a marker in a folder of its own (`_unchanged_key`), beside its
# last data: later steps load the marker in its place, so that no step writes, reads or parses
# the course's data on a night nothing changed for it.
UNCHANGED_FOLDER = "_unchanged"
# Each object is parquet: a Computed outcome is its frame, its stamps in the footer; a Failed or
# Unchanged one a frame of no columns whose footer says which, and why. The footer is read alone
# (a ranged read), so a step learns each course's outcome without reading its data.
_OUTCOME_NOTE = "sync_assets.outcome"
_REASON_NOTE = "sync_assets.reason"
_STAMP_PREFIX = "sync_assets:"
_KINDS: dict[str, type[Failed] | type[Unchanged]] = {"failed": Failed, "unchanged": Unchanged}


class StoredOutcomes(Outcomes):
    """`{partition or course: Outcome}` read from storage each time one is asked for."""

    def __init__(self, store: ObjectStore, keys: Mapping[str, str]) -> None:
        self._store = store
        self._keys = dict(keys)
        self._notes: dict[str, dict[str, str]] = {}  # read once: a footer per object

    def renamed(self, names: Mapping[str, str]) -> StoredOutcomes:
        """The same objects under other names (`names[old]`); those not in `names` left out."""
        renamed = StoredOutcomes(self._store, {})
        for old, key in self._keys.items():
            if old in names:
                renamed._keys[names[old]] = key
                if old in self._notes:
                    renamed._notes[names[old]] = self._notes[old]
        return renamed

    def _footer(self, name: str) -> dict[str, str]:
        if name not in self._notes:
            self._notes[name] = _footer(self._store, self._keys[name])
        return self._notes[name]

    def kind(self, name: str) -> type[Computed] | type[Failed] | type[Unchanged]:
        if self._keys[name].split("/")[-2:-1] == [UNCHANGED_FOLDER]:
            return Unchanged  # a marker: its folder says what it is
        notes = self._footer(name)
        return _KINDS.get(notes.get(_OUTCOME_NOTE, ""), Computed)

    def stamps(self, name: str) -> dict[str, str]:
        """A computed outcome's stamps, from its footer alone (none for the other kinds)."""
        return _stamps(self._footer(name)) if self.kind(name) is Computed else {}

    def __getitem__(self, name: str) -> Outcome:
        kind = self.kind(name)
        if kind is Unchanged:
            return Unchanged()
        if kind is Failed:
            return Failed(self._footer(name)[_REASON_NOTE])
        return Computed(_read(self._store, self._keys[name]), _stamps(self._footer(name)))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys  # without reading the object, unlike Mapping's default


class OutcomeSpool(StoredOutcomes):
    """A step's output built course by course: each outcome goes to parquet under `directory`
    at once, so the output for every course is never in memory at once.

    Hand it to the IO manager as the step's output; it copies the files into storage. The
    directory must outlive the output (e.g. a TemporaryDirectory around the `yield`).
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(ObjectStore(Path(directory)), {})
        self._unchanged: set[str] = set()

    def add(self, name: str, outcome: Outcome) -> None:
        if isinstance(outcome, Unchanged):
            self._unchanged.add(name)
            self._keys[name] = _file_name(name)
            return
        key = _file_name(name)
        _write(self._store, key, outcome)
        self._keys[name] = key

    def kind(self, name: str) -> type[Computed] | type[Failed] | type[Unchanged]:
        return Unchanged if name in self._unchanged else super().kind(name)

    def path(self, name: str) -> Path:
        return self._store.local_path(self._keys[name])


def _file_name(partition: str) -> str:
    name = partition if _SAFE.match(partition) else hashlib.sha256(partition.encode()).hexdigest()
    return f"{name}.parquet"


def _write(store: ObjectStore, key: str, outcome: Computed | Failed | Unchanged) -> None:
    if isinstance(outcome, Computed):
        notes = {_STAMP_PREFIX + name: note for name, note in outcome.stamps.items()}
        store.write(key, lambda path: outcome.frame.write_parquet(path, metadata=notes))
        return
    notes = {_OUTCOME_NOTE: "failed" if isinstance(outcome, Failed) else "unchanged"}
    if isinstance(outcome, Failed):
        notes[_REASON_NOTE] = outcome.reason
    store.write(key, lambda path: pl.DataFrame().write_parquet(path, metadata=notes))


def _stamps(notes: Mapping[str, str]) -> dict[str, str]:
    return {
        name.removeprefix(_STAMP_PREFIX): note
        for name, note in notes.items()
        if name.startswith(_STAMP_PREFIX)
    }


def _read(store: ObjectStore, key: str) -> pl.DataFrame:
    if store.is_local:
        return pl.read_parquet(store.local_path(key))
    with store.open(key) as source:
        return pl.read_parquet(source)


def _footer(store: ObjectStore, key: str) -> dict[str, str]:
    """The object's footer notes (key-value metadata)."""
    if store.is_local:
        return pl.read_parquet_metadata(store.local_path(key))
    with store.open(key) as source:  # the footer only: a ranged read, not the whole object
        return pl.read_parquet_metadata(source)
