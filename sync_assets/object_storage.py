"""Where asset values live: a local folder, or object storage named by an fsspec URL.

`SYNC_ASSETS_STORAGE_URL` is a path (the embedded default) or a URL such as
`s3://bucket/prefix`; S3 credentials and endpoint come from the standard `AWS_*` variables only
(`AWS_ENDPOINT_URL` for an S3-compatible store), never from the URL or config.

Writes are atomic on both: locally a temporary file moved into place; on object storage one
upload of a finished local file (an S3 PUT, or a multipart upload's completion, makes the object
appear whole or not at all), so a reader never sees half a value.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sync_assets.settings import ConfigurationError

SETTING = "SYNC_ASSETS_STORAGE_URL"


def check_storage_url(url: str) -> str:
    """The URL if it can be used; credentials in it are refused (they belong in AWS_*)."""
    parts = urlsplit(url)
    if parts.scheme and len(parts.scheme) > 1 and (parts.username or parts.password):
        raise ConfigurationError(
            SETTING,
            f"{parts.scheme}://…: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible store)",
        )
    return url


class ObjectStore:
    """Objects under one root, named by relative keys such as `enrolments/<course>.parquet`."""

    def __init__(self, url: str | Path) -> None:
        self.url = check_storage_url(str(url)).rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self._fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def _full(self, key: str) -> str:
        return f"{self._root}/{key}"

    def local_path(self, key: str) -> Path:
        """The file behind a key of a local store (polars reads it memory-mapped)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local folder")
        return Path(self._full(key))

    def exists(self, key: str) -> bool:
        return bool(self._fs.exists(self._full(key)))

    def open(self, key: str) -> AbstractContextManager[IO[bytes]]:
        return self._fs.open(self._full(key), "rb")

    def write(self, key: str, fill: Callable[[Path], object]) -> None:
        """Store what `fill(path)` writes to a local file, as the object `key`, atomically."""
        if self.is_local:
            _replace(self.local_path(key), fill)
            return
        staging = Path(tempfile.gettempdir()) / f"sync_assets-{uuid.uuid4().hex}.partial"
        try:
            fill(staging)
            self._fs.put_file(str(staging), self._full(key))
        finally:
            staging.unlink(missing_ok=True)

    def put(self, source: Path, key: str) -> None:
        """Store a local file as the object `key`, atomically."""
        if self.is_local:
            _replace(self.local_path(key), lambda partial: shutil.copyfile(source, partial))
        else:
            self._fs.put_file(str(source), self._full(key))

    def copy(self, source_key: str, key: str) -> None:
        """Store a copy of the object `source_key` as `key`, atomically; the source stays."""
        if self.is_local:
            self.put(self.local_path(source_key), key)
        else:
            self._fs.copy(self._full(source_key), self._full(key))

    def delete(self, key: str) -> None:
        """Remove the object `key`; nothing happens if there is none."""
        if self.is_local:
            self.local_path(key).unlink(missing_ok=True)
        elif self._fs.exists(self._full(key)):
            self._fs.rm_file(self._full(key))

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (the partition sensor lists stored partitions to remove those
        of retired keys; tests and operators)."""
        root = self._full(prefix).rstrip("/")
        if not self._fs.exists(root):
            return []
        return sorted(
            path[len(self._root) + 1 :]
            for path in self._fs.find(root)
            if not Path(path).name.startswith(".")
        )


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
