"""Where the Partners API client keeps ETags and bodies (hishel storages), never credentials.

A SQLite file on one machine, or Redis shared by every container of a deployment: each run of a
deployment starts on an empty disk, and without a shared cache it would fetch every unchanged
enrolment report in full instead of getting a 304.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anysqlite
import hishel
from hishel import Entry, Headers, Request, Response
from redis import RedisError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sync_assets.settings import LEGACY_HTTP_CACHE_NAMES, http_cache_password

log = logging.getLogger(__name__)

CACHE_LOGGERS = (
    "hishel._core._storages._async_sqlite",
    "hishel._core._storages._sync_sqlite",
    "hishel._core._storages._async_redis",
    "hishel._core._storages._sync_redis",
)


class _CacheFailureInOneLine(logging.Filter):
    """hishel logs a failed cache write (e.g. the cache file locked by another sync on the
    machine, or Redis out of memory) with its whole traceback. The request was served all the
    same; only its 304 next time is lost. One line says so."""

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

# Kept with a stored response: the sha256 of its body as the client read it (inflated). A 304
# then tells the night's check which report it was served without reading the body back from the
# cache. Only this client writes it: the same header from a server is dropped below the cache.
BODY_DIGEST_HEADER = "x-sync-assets-body-sha256"

# Every key this project writes in a shared Redis starts with this; v2: requests are kept without
# their credentials (v1 was the SQLite file that kept them).
REDIS_KEY_PREFIX = "sync_assets:partners_api:v2"
# A cache answers in milliseconds or not at all: a Redis that does not must cost a sync seconds,
# once (see Outages), not redis-py's default ten retries on every request.
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 5.0
# How long a process leaves a Redis it found unreachable alone before trying it again.
REDIS_OUTAGE_PAUSE_SECONDS = 600.0


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
    """Put before a hishel storage in the bases: it stores each request without credentials, a
    new response in place of what was kept for its URL, and nothing for a 304 that brought no
    new header."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each entry's headers as read, until its request is done: whether a 304 changes them.
        self._headers_read: dict[uuid.UUID, Headers] = {}

    async def create_entry(self, request, response, key, **limits):  # type: ignore[override]
        # hishel 2.0.0 keeps the entry a changed response replaces (it means to reuse its id, and
        # no storage does). With two entries kept, a 304 with a weak ETag, as the API sends,
        # matches neither, so the day after each change a report cost a 304 and a 200.
        for replaced in await self.get_entries(key):
            self._headers_read.pop(replaced.id, None)
            await self.remove_entry(replaced.id)
        return await super().create_entry(without_secrets(request), response, key, **limits)

    async def get_entries(self, key: str) -> list[Entry]:
        return self._remember_headers(await super().get_entries(key))

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        # hishel rewrites the entry on every 304 (a read, a write and a commit: on a quiet night,
        # one per report of the catalogue) although only `Date` moved; our responses always
        # revalidate, so a stored Date serves nothing.
        read = self._headers_read.pop(id, None)
        if read is not None and _apart_from_date(read) == _apart_from_date(headers):
            return
        await super().update_headers(id, headers)

    def _remember_headers(self, entries: list[Entry]) -> list[Entry]:
        for entry in entries:
            self._headers_read[entry.id] = entry.response.headers
        return entries


def _apart_from_date(headers: Headers) -> dict[str, list[str]]:
    return {name: headers.get_list(name) for name in headers if name.lower() != "date"}


class SecretFreeSqliteStorage(_OneEntryPerUrlWithoutSecrets, hishel.AsyncSqliteStorage):
    """hishel's SQLite cache, storing each request without its credentials."""


class InlineConnection(anysqlite.Connection):
    """anysqlite's connection with each call made on the event loop's own thread.

    anysqlite sends every call to a worker thread and back, one at a time: a dozen a request
    (the lookup, the entry, a row per 128 KiB of body, the digest). The hops, not SQLite, were
    the night's check: `large`'s 3,927 reports (900 MB) asked at 16 in flight took 55 s, 14 s
    inline (teachcomputing: 2.2 s, 0.65 s). A call on a local file takes microseconds to a
    millisecond; one waiting on another process's write lock (hishel's busy_timeout, 5 s) now
    holds the loop, where it held every request's cache step before.
    """

    async def close(self) -> None:
        self._real_connection.close()

    async def commit(self) -> None:
        self._real_connection.commit()

    async def rollback(self) -> None:
        self._real_connection.rollback()

    async def cursor(self) -> anysqlite.Cursor:
        return _InlineCursor(self._real_connection.cursor(), self._limiter)

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> anysqlite.Cursor:
        return _InlineCursor(self._real_connection.execute(sql, parameters), self._limiter)

    async def executemany(
        self, sql: str, seq_of_parameters: Iterable[Iterable[Any]]
    ) -> anysqlite.Cursor:
        cursor = self._real_connection.executemany(sql, seq_of_parameters)
        return _InlineCursor(cursor, self._limiter)

    async def executescript(self, sql_script: str) -> anysqlite.Cursor:
        return _InlineCursor(self._real_connection.executescript(sql_script), self._limiter)


class _InlineCursor(anysqlite.Cursor):
    async def close(self) -> None:
        self._real_cursor.close()

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> anysqlite.Cursor:
        return _InlineCursor(self._real_cursor.execute(sql, parameters), self._limiter)

    async def executemany(
        self, sql: str, seq_of_parameters: Iterable[Iterable[Any]]
    ) -> anysqlite.Cursor:
        cursor = self._real_cursor.executemany(sql, seq_of_parameters)
        return _InlineCursor(cursor, self._limiter)

    async def executescript(self, sql_script: str) -> anysqlite.Cursor:
        return _InlineCursor(self._real_cursor.executescript(sql_script), self._limiter)

    async def fetchone(self) -> Any:
        return self._real_cursor.fetchone()

    async def fetchmany(self, size: int | None = 1) -> Any:
        return self._real_cursor.fetchmany(size)

    async def fetchall(self) -> Any:
        return self._real_cursor.fetchall()


class Outages:
    """Redis caches this process found unreachable, and until when it leaves each alone.

    Shared by the clients of a process (a run's steps each make one), so that a Redis that is
    down costs a run one warning line and one failed connection, not one per request or step.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def active(self, where: str) -> bool:
        return time.monotonic() < self._until.get(where, 0.0)

    def noticed(self, where: str, error: Exception, password: str | None) -> None:
        if self.active(where):
            return  # the requests in flight all fail at once: the first one said it
        self._until[where] = time.monotonic() + REDIS_OUTAGE_PAUSE_SECONDS
        problem = f"{type(error).__name__}: {error}".splitlines()[0]
        if password:
            problem = problem.replace(password, "***")
        log.warning(
            "Partners API cache at %s unreachable (%s); requests go uncached, without 304s, "
            "for the next %d min",
            where,
            problem,
            REDIS_OUTAGE_PAUSE_SECONDS // 60,
        )


OUTAGES = Outages()


class SecretFreeRedisStorage(_OneEntryPerUrlWithoutSecrets, hishel.AsyncRedisStorage):
    """hishel's Redis cache, storing each request without its credentials, under
    REDIS_KEY_PREFIX, and stepping aside while Redis is unreachable: the request then goes to the
    API uncached (a 200 instead of a 304), which costs bandwidth, not the sync."""

    def __init__(self, url: str, *, idle_seconds: float, password: str | None = None) -> None:
        # A password in the URL wins over `password` (redis-py lets URL options override).
        client = Redis.from_url(
            url,
            password=password,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        super().__init__(
            client,
            # Idle expiry rather than a fixed lifetime: a report asked for every night keeps its
            # ETag for good (a fixed TTL would cost a full download of every report each period),
            # and what nobody asks for any more (runs long over) leaves Redis by itself. hishel
            # sets it on every key as a Redis TTL and extends it on use.
            default_ttl=None,
            default_tti=idle_seconds,
            # hishel's default (10 MiB) would silently stop caching a large course's report.
            max_stream_size=None,
            key_prefix=REDIS_KEY_PREFIX,
        )
        self.where = redacted(url)
        self._password = urlsplit(url).password or password

    async def get_entries(self, key: str) -> list[Entry]:
        if OUTAGES.active(self.where):
            return []
        try:
            # hishel's get_entries logs a traceback per failed lookup; its inner lookup (hishel
            # is pinned) lets one warning stand for the outage instead.
            return self._remember_headers(await self._get_entries(key))
        except (RedisError, OSError) as error:
            OUTAGES.noticed(self.where, error, self._password)
            return []

    async def create_entry(  # type: ignore[override]
        self, request: Request, response: Response, key: str, **limits: float | None
    ) -> Entry:
        if OUTAGES.active(self.where):
            return Entry(id=uuid.uuid4(), request=request, response=response)
        return await super().create_entry(request, response, key, **limits)

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        if not OUTAGES.active(self.where):
            await super().update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:
        if not OUTAGES.active(self.where):
            await super().remove_entry(id)


async def remember_body_digest(
    storage: hishel.AsyncBaseStorage, key: str, etag: str, digest: str
) -> None:
    """Keep `digest` with the stored response of `key` whose ETag is `etag` (the one just read);
    none: another process replaced it meanwhile, and its reader keeps its own."""
    for entry in await storage.get_entries(key):
        if entry.response.headers.get("etag") == etag:
            headers = {
                name: entry.response.headers.get_list(name) for name in entry.response.headers
            }
            headers[BODY_DIGEST_HEADER] = [digest]
            await storage.update_headers(entry.id, Headers(headers))


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: no password, no query (redis-py takes options there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username or ''}:***@" if parts.password is not None else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss")


def open_storage(
    url: str | None, *, max_bytes: int, idle_seconds: float
) -> hishel.AsyncBaseStorage:
    """The storage for a cache URL: a redis(s):// URL, a SQLite file path, or None (in memory,
    for this client only). Redis gets SYNC_ASSETS_HTTP_CACHE_PASSWORD too, so that the URL can
    be configuration (a ConfigMap) and the password a secret."""
    if url is None:
        # Not database_path=":memory:": hishel makes that a file, .cache/hishel/:memory:, in the
        # working directory.
        memory = InlineConnection(sqlite3.connect(":memory:", check_same_thread=False))
        return SecretFreeSqliteStorage(connection=memory, max_size=None)
    if is_redis_url(url):
        return SecretFreeRedisStorage(
            url, idle_seconds=idle_seconds, password=http_cache_password()
        )
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_legacy_caches(path.parent)
    # Autocommit, as hishel opens its own file: a failed write leaves no transaction open.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    return SecretFreeSqliteStorage(
        connection=InlineConnection(connection), database_path=path, max_size=max_bytes
    )


def _remove_legacy_caches(folder: Path) -> None:
    """Earlier releases' cache files hold (expired) bearer tokens: none stays on disk."""
    for name in LEGACY_HTTP_CACHE_NAMES:
        for leftover in folder.glob(name + "*"):  # the database, its -wal and -shm
            leftover.unlink(missing_ok=True)
