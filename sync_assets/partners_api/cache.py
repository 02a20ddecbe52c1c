"""Where the Partners API client keeps ETags and bodies (hishel storages), never credentials."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

import anysqlite
import hishel
from hishel import Headers, Request

from sync_assets.settings import LEGACY_HTTP_CACHE_NAMES

CACHE_LOGGERS = ("hishel._core._storages._async_sqlite", "hishel._core._storages._sync_sqlite")


class _CacheFailureInOneLine(logging.Filter):
    """hishel logs a failed cache write (e.g. the cache file locked by another sync on the
    machine) with its whole traceback. The request was served all the same; only its 304 next
    time is lost. One line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = (
                f"{record.getMessage()} ({type(error).__name__}: {error}); the request was "
                "served, its response is not kept for a 304 next time"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


for _name in CACHE_LOGGERS:
    logging.getLogger(_name).addFilter(_CacheFailureInOneLine())

# Request headers never kept at rest: the bearer token is a live credential for 90 s.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def without_secrets(request: Request) -> Request:
    """The request as the cache keeps it: it keys on method and URL, and our responses vary on
    no request header, so dropping `Authorization` changes no lookup."""
    kept = {
        name: request.headers.get_list(name)
        for name in request.headers
        if name.lower() not in SECRET_HEADERS
    }
    return replace(request, headers=Headers(kept))


class _OneEntryPerUrlWithoutSecrets(hishel.AsyncBaseStorage):
    """Put before a hishel storage in the bases: it stores each request without credentials, and
    a new response in place of what was kept for its URL."""

    async def create_entry(self, request, response, key, **limits):  # type: ignore[override]
        # hishel 2.0.0 keeps the entry a changed response replaces (it means to reuse its id, and
        # no storage does). With two entries kept, a 304 with a weak ETag, as the API sends,
        # matches neither, so the day after each change a report cost a 304 and a 200.
        for replaced in await self.get_entries(key):
            await self.remove_entry(replaced.id)
        return await super().create_entry(without_secrets(request), response, key, **limits)


class SecretFreeSqliteStorage(_OneEntryPerUrlWithoutSecrets, hishel.AsyncSqliteStorage):
    """hishel's SQLite cache, storing each request without its credentials."""


def open_storage(url: str | None, *, max_bytes: int) -> hishel.AsyncBaseStorage:
    """The storage for a cache location: a SQLite file path, or None (in memory, for this client
    only)."""
    if url is None:
        # Not database_path=":memory:": hishel makes that a file, .cache/hishel/:memory:, in the
        # working directory.
        memory = anysqlite.Connection(sqlite3.connect(":memory:", check_same_thread=False))
        return SecretFreeSqliteStorage(connection=memory, max_size=None)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_legacy_caches(path.parent)
    return SecretFreeSqliteStorage(database_path=path, max_size=max_bytes)


def _remove_legacy_caches(folder: Path) -> None:
    """Earlier releases' cache files hold (expired) bearer tokens: none stays on disk."""
    for name in LEGACY_HTTP_CACHE_NAMES:
        for leftover in folder.glob(name + "*"):  # the database, its -wal and -shm
            leftover.unlink(missing_ok=True)
