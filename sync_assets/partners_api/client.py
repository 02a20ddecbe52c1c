"""A Partners API client that survives a production API.

Layers, top to bottom: JWT auth (renewed before expiry, one retry on 401) → an RFC 9111 private
cache kept across processes in SQLite or, shared by a deployment's containers, in Redis (hishel;
see `cache`), so an unchanged report costs a 304 and is served from the kept body → a metering
transport that counts what reaches the wire → the network (or the in-process simulator). Around
each request: bounded retries with exponential backoff and jitter on 429, 5xx, connection and
read errors and unreadable bodies, honouring `Retry-After`, within a total time budget; a
concurrency bound and an optional requests-per-second ceiling for fan-out. Membership look-ups
bypass the cache (each is fetched once ever and kept by the platform) and httpx: they go on
aiohttp (`lookups_wire`), with the same cap, metering, retries and origin. So does the night's
check of the reports, under the same cache (`_report_page`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import hishel
import httpx
import polars as pl
from aiolimiter import AsyncLimiter
from hishel import CacheStatus

# hishel's RFC 9111 machine on its own, as its httpx transport drives it (`_report_page`), and
# the request headers as that transport keeps them: the two paths store the same entries.
from hishel._async_rfc import handle_request_with_rfc
from hishel.httpx import AsyncCacheTransport
from hishel.httpx._async import _headers_to_internal
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)

from sync_assets.partners_api import contract
from sync_assets.partners_api.auth import PartnersJwtAuth
from sync_assets.partners_api.body_cap import (
    BodyTooLarge,
    Inflated,
    inflate,
    inflated_size_counter,
)
from sync_assets.partners_api.cache import (
    BODY_DIGEST_HEADER,
    open_storage,
    remember_body_digest,
)
from sync_assets.partners_api.lanes import LanedTransport, lane
from sync_assets.partners_api.lookups_wire import LookupAnswer, LookupWire
from sync_assets.partners_api.metrics import ApiMetrics, MeteringTransport
from sync_assets.series import sorted_and_distinct
from sync_assets.settings import DEFAULT_BACKOFF_SECONDS, DEFAULT_MAX_BODY_BYTES

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


HEADERS = {"Accept": "application/json", "User-Agent": "sync-assets"}
# Private (not shared): a kept body is this client's alone.
CACHE_OPTIONS = hishel.CacheOptions(shared=False)
# What hishel's machine adds to a request to revalidate a kept response: all a report page's
# request needs from it (the wire sets the rest).
REVALIDATION_HEADERS = ("if-none-match", "if-modified-since")
# Not kept with a body read whole (`_report_page`): it was inflated and arrived in full (as
# hishel's httpx transport keeps a body read before storing it); nor a server's word for what
# only this client says (`_kept_digest`).
NOT_KEPT_HEADERS = frozenset(
    {"transfer-encoding", "content-encoding", "content-length", BODY_DIGEST_HEADER}
)
MAX_PAGES = 10_000
MEMBERSHIP_BATCH = 20_000


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    consumer_key: str
    consumer_secret: str = field(repr=False)
    concurrency: int = 8
    max_requests_per_second: float | None = None
    max_attempts: int = 5
    max_retry_seconds: float = 120.0
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 60.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # a longer body fails its request, unread
    # A SQLite file path or a redis(s):// URL, which may carry a password (hence no repr); None:
    # an in-memory cache for this client only.
    cache_url: str | None = field(default=None, repr=False)
    cache_max_bytes: int = 4 * 1024**3  # the SQLite file's bound; Redis has its maxmemory
    # Redis: an entry unused this long expires (hishel renews the keys' TTL once half is gone).
    cache_idle_seconds: float = 30 * 24 * 3600.0


class PartnersApiError(RuntimeError):
    """A request that failed for good; the message names endpoint and status, never credentials."""

    def __init__(
        self, endpoint: str, subject: str | None, problem: str, *, fatal: bool = False
    ) -> None:
        about = f" {subject}" if subject else ""
        super().__init__(f"Partners API {endpoint}{about}: {problem}")
        self.endpoint = endpoint
        self.subject = subject
        # True when no other request can succeed either (refused credentials): not one course's.
        self.fatal = fatal


class _Retryable(Exception):
    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Fetched:
    """Records of one resource (all its pages), what was quarantined, and whether it changed."""

    records: pl.DataFrame
    quarantine: pl.DataFrame
    not_modified: bool


def report_digest(page_digests: Iterable[str]) -> str:
    """A report's digest from its pages' (in order): equal digests, equal reports."""
    return hashlib.sha256("\n".join(page_digests).encode()).hexdigest()


@dataclass(frozen=True)
class ReportVersion:
    """Which version of a run's report the API serves: the digest `RawReport.digest` would give,
    and whether every page answered 304. What the night's check needs, without the bodies."""

    run_uuid: str
    digest: str
    not_modified: bool


@dataclass(frozen=True)
class RawReport:
    """One run's report as it came: each page's digest, and what is needed to parse it later.

    A page that answered 304 is kept as the cached bytes, not decoded: when the whole report is
    the one a course was last synced from, the sync skips the course and never parses it. A page
    requested here that answered 200 was decoded on arrival (to retry a broken body) and is kept
    decoded. A report taken from the cache as the night's check stored it (`kept_report`) is
    bytes the check did not decode: if it cannot be read, ask for it again.
    """

    run_uuid: str
    pages: tuple[Any, ...]  # a decoded body, or the undecoded bytes of a 304
    page_digests: tuple[str, ...]
    not_modified: bool  # every page answered 304
    page_urls: tuple[str, ...] = ()  # what each page was requested as (its cache entry's key)
    from_check: bool = False  # taken from the cache as the check stored it, never decoded

    @property
    def digest(self) -> str:
        """The report's content as served: equal digests, equal reports (pages in order)."""
        return report_digest(self.page_digests)

    def parse(self) -> Fetched:
        """Raises on a body that cannot be read (any exception): see `PartnersApiClient.forget`."""
        return parse_reports([self])

    def decoded_pages(self) -> list[tuple[Any, str]]:
        """Each page decoded, with the run it is of."""
        return [
            (contract.decode_report(page) if isinstance(page, bytes) else page, self.run_uuid)
            for page in self.pages
        ]


def parse_reports(reports: Sequence[RawReport]) -> Fetched:
    """Several runs' reports read in one pass (`contract.parse_enrolment_pages`), as their
    parses one by one would be concatenated. Raises on any body that cannot be read: which one
    is then for the caller to find, one by one."""
    parsed = contract.parse_enrolment_pages(
        [page for report in reports for page in report.decoded_pages()]
    )
    return Fetched(
        records=parsed.records,
        quarantine=parsed.quarantine,
        not_modified=all(report.not_modified for report in reports),
    )


@dataclass(frozen=True)
class Memberships:
    found: pl.DataFrame  # contract.MEMBERSHIP_SCHEMA
    gone: list[str]  # 404: kept as gone, not asked again
    quarantine: pl.DataFrame
    failed: dict[str, str] = field(default_factory=dict)  # membership → why, after every retry


def _retry_after_seconds(response: Answer) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare; fall back to our own backoff


DEFAULT_PORTS = {"http": 80, "https": 443}


def foreign_origin(base_url: str, link: str) -> str | None:
    """`link`'s origin (scheme://host:port) when it is not `base_url`'s, else None.

    A relative link (a path) is None: it is requested under the base URL. Only the base URL's
    origin is ever sent the bearer token, so a link to any other is not followed at all.
    """
    parts = urlsplit(link)
    if not parts.scheme and not parts.netloc:
        return None
    base = urlsplit(base_url)
    theirs = _origin(parts, base.scheme)
    return None if theirs == _origin(base, base.scheme) else theirs


def next_link_problem(base_url: str, link: str) -> str | None:
    """Why a `next` link from a response is not requested, or None when it may be.

    Judged by both parsers on the way (urlsplit here, httpx's when the request is built): a link
    either of them cannot parse, or whose origin either places elsewhere, is refused, so a link
    the two read differently can never carry the token to another host.
    """
    try:
        foreign = foreign_origin(base_url, link)
        theirs = httpx.URL(link)
    except (ValueError, httpx.InvalidURL):
        return "next link is not a usable URL, not requested"
    if foreign is None and theirs.is_absolute_url:
        base = httpx.URL(base_url)
        if (theirs.scheme, theirs.host, theirs.port or DEFAULT_PORTS.get(theirs.scheme)) != (
            base.scheme,
            base.host,
            base.port or DEFAULT_PORTS.get(base.scheme),
        ):
            foreign = _one_line(f"{theirs.scheme}://{theirs.host}:{theirs.port or ''}")
    if foreign is not None:
        return f"next link points to another origin ({foreign}), not requested"
    return None


def _origin(parts: SplitResult, default_scheme: str) -> str:
    scheme = (parts.scheme or default_scheme).lower()  # `//host/path` takes the base's scheme
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # not a port: shown as given, and never equal to the base's
        return _one_line(f"{scheme}://{parts.netloc}")
    return _one_line(f"{scheme}://{parts.hostname or ''}:{port}")


def _one_line(text: str, limit: int = 200) -> str:
    """`text` as it may appear in an error: printable, one line, bounded (it came from a server)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _cache_key(url: str) -> str:
    # hishel's key for RFC mode (see hishel.httpx.AsyncCacheTransport).
    return hashlib.sha256(f"RFC {url}".encode()).hexdigest()


def httpx_wire(concurrency: int, tls: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """The network under httpx: a connection lane per fan-out worker (see `lanes`)."""
    return LanedTransport(
        max(concurrency, 1),
        lambda connections: httpx.AsyncHTTPTransport(
            verify=tls,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        ),
    )


def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), built once
    a process for each setting of those: loading the CAs costs 20–40 ms, and a night builds a
    client a dozen times (the partitions check, each step). Contexts are shared read-only."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the same two variables


class PartnersApiClient:
    """Use as `async with PartnersApiClient(settings) as client: …`."""

    def __init__(
        self, settings: ClientSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.metrics = ApiMetrics()
        self.auth = PartnersJwtAuth(settings.consumer_key, settings.consumer_secret)
        tls = tls_context()  # for every lane and the look-ups
        wire = transport or httpx_wire(settings.concurrency, tls)
        self._metered = MeteringTransport(wire, self.metrics)
        # Below the cache: an over-long body is neither read on nor stored.
        self._capped = CappedTransport(self._metered, settings.max_body_bytes)
        self._storage = open_storage(
            settings.cache_url,
            max_bytes=settings.cache_max_bytes,
            idle_seconds=settings.cache_idle_seconds,
        )
        cached = AsyncCacheTransport(
            next_transport=self._capped,
            storage=self._storage,
            rfc=CACHE_OPTIONS,
        )
        self._base_url = settings.base_url.rstrip("/")
        self._timeout = httpx.Timeout(settings.timeout_seconds)
        self._cached = httpx.AsyncClient(
            transport=cached,
            base_url=self._base_url,
            auth=self.auth,
            timeout=self._timeout,
            headers=HEADERS,
        )
        # Look-ups on aiohttp (see `lookups_wire`); on the wire given instead when there is one
        # (the in-process simulator), which only httpx can speak to.
        self._lookups = (
            None
            if transport is not None
            else LookupWire(
                self._base_url,
                headers=HEADERS,
                connections=max(settings.concurrency, 1),
                timeout_seconds=settings.timeout_seconds,
                max_body_bytes=settings.max_body_bytes,
                metrics=self.metrics,
                tls=tls,
            )
        )
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self._limiter = (
            AsyncLimiter(settings.max_requests_per_second, 1)
            if settings.max_requests_per_second
            else None
        )

    async def __aenter__(self) -> PartnersApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._cached.aclose()  # closes the wire below it too
        if self._lookups is not None:
            await self._lookups.aclose()
        await self._storage.close()

    # --- the three endpoints a sync reads (SPEC §2 has a fourth, one course run: unused) --------

    async def course_runs(self) -> Fetched:
        answers = await self._get_answers("/partners/course_runs", "course_runs", None)
        return await self._parse_pages(answers, "course_runs", None, contract.parse_course_runs)

    async def enrolment_report(self, run_uuid: str) -> RawReport:
        """A run's report, every page, unparsed (see `RawReport`); parse it with `.parse()`."""
        endpoint = "course_enrolments_report"
        path = f"/partners/course_runs/{run_uuid}/course_enrolments_report"
        answers = await self._get_answers(path, endpoint, run_uuid, lazy=True)
        return RawReport(
            run_uuid,
            tuple(a.content if a.body is _UNDECODED else a.body for a in answers),
            tuple(a.digest for a in answers),
            all(a.not_modified for a in answers),
            tuple(a.url for a in answers),
        )

    async def report_version(self, run_uuid: str) -> ReportVersion:
        """A run's report as `enrolment_report` would request it, without reading back the body
        of a page that answered 304 when the cache kept that body's digest: a quiet night's
        check of a thousand courses learns that nothing changed without reading and hashing
        every report it holds."""
        path = f"/partners/course_runs/{run_uuid}/course_enrolments_report"
        answers = await self._get_answers(
            path, "course_enrolments_report", run_uuid, lazy=True, read_kept=False, decode=False
        )
        return ReportVersion(
            run_uuid,
            report_digest([a.digest for a in answers]),
            all(a.not_modified for a in answers),
        )

    async def kept_report(
        self, run_uuid: str, digest: str, *, not_modified: bool
    ) -> RawReport | None:
        """A run's report as the cache keeps it, without a request, if it is the one whose digest
        is `digest` (what this night's check of the courses was served, `not_modified` as it
        was); None when the cache holds another or none: request it then.

        The check that decides which courses changed has just requested every report; the
        step that reads a changed course's report takes it from here, so the night asks for
        each report once.
        """
        path = f"/partners/course_runs/{run_uuid}/course_enrolments_report"
        url: str | None = str(self._cached.build_request("GET", path).url)
        pages: list[bytes] = []
        digests: list[str] = []
        urls: list[str] = []
        while url is not None:
            if url in urls or len(urls) >= MAX_PAGES:
                return None
            entries = await self._storage.get_entries(_cache_key(url))
            if len(entries) != 1 or entries[0].response.stream is None:
                return None
            kept = entries[0].response
            content = b"".join([chunk async for chunk in kept.stream])  # type: ignore[union-attr]
            try:  # hishel's httpx transport keeps a body as it arrived, compressed or not
                content = inflate(kept.headers, content)
            except zlib.error:
                return None
            pages.append(content)
            digests.append(hashlib.sha256(content).hexdigest())
            urls.append(url)
            link = httpx.Response(200, headers=list(kept.headers.items())).links.get("next")
            url = None
            if link is not None:
                if next_link_problem(self._base_url, link["url"]) is not None:
                    return None
                url = str(self._cached.build_request("GET", link["url"]).url)
        report = RawReport(
            run_uuid, tuple(pages), tuple(digests), not_modified, tuple(urls), from_check=True
        )
        return report if report.digest == digest else None

    async def memberships(self, membership_uuids: Iterable[str] | pl.Series) -> Memberships:
        """Each membership looked up once (in the order first given): what was found, gone,
        quarantined, or failed after every retry."""
        # A polars Series, not a Python list: only a batch's uuids are Python texts at a time
        # (a million at once, on `large`, cost several times their Series, kept by CPython).
        uuids = (
            membership_uuids
            if isinstance(membership_uuids, pl.Series)
            else pl.Series(list(membership_uuids), dtype=pl.String)
        )
        if not sorted_and_distinct(uuids):  # linking's are: not copied again
            uuids = uuids.unique(maintain_order=True)
        found: list[pl.DataFrame] = []
        quarantine: list[pl.DataFrame] = []
        gone: list[str] = []
        failed: dict[str, str] = {}
        # Parsed a batch at a time: a million JSON bodies held at once cost ~1 GB of dicts.
        for start in range(0, len(uuids), MEMBERSHIP_BATCH):
            batch = uuids.slice(start, MEMBERSHIP_BATCH).to_list()
            bodies = await self._map(or_failure(self._membership), batch)
            answered = []
            for uuid, body in zip(batch, bodies, strict=True):
                if isinstance(body, PartnersApiError):
                    failed[uuid] = str(body)
                elif body is None:
                    gone.append(uuid)
                else:
                    answered.append((uuid, body))
            parsed = contract.parse_memberships(answered)
            # Look-ups are not cached: nothing to forget.
            for uuid, why in parsed.unreadable.items():
                failed[uuid] = str(PartnersApiError("organisation_membership", uuid, why))
            found.append(parsed.records)
            quarantine.append(parsed.quarantine)
        return Memberships(
            found=pl.concat(found) if found else _empty(contract.MEMBERSHIP_SCHEMA),
            gone=gone,
            quarantine=pl.concat(quarantine) if quarantine else contract.empty_quarantine(),
            failed=failed,
        )

    async def _membership(self, membership_uuid: str) -> Any:
        """The membership's JSON body, or None when the API says 404 (gone)."""
        path = f"/partners/organisation_memberships/{membership_uuid}"
        answer = await self._get(
            self._get_uncached, path, "organisation_membership", membership_uuid
        )
        return answer.body

    async def fan_out(self, fetch: Callable[[str], Awaitable[Any]], keys: list[str]) -> list[Any]:
        """`fetch(key)` for every key, `concurrency` at a time, each worker on its own connection
        lane: for work of the caller's that makes several requests per key."""
        return await self._map(fetch, keys)

    async def _map(self, fetch: Callable[[str], Awaitable[Any]], keys: list[str]) -> list[Any]:
        """`fetch` every key with `concurrency` workers: memory stays flat for a million keys
        (one task per key would hold a million coroutines at once)."""
        results: list[Any] = [None] * len(keys)
        queue = iter(enumerate(keys))

        async def worker(number: int) -> None:
            with lane(number):
                for index, key in queue:
                    results[index] = await fetch(key)

        workers = max(1, min(self.settings.concurrency, len(keys)))
        await asyncio.gather(*(worker(number) for number in range(workers)))
        return results

    # --- requests ------------------------------------------------------------------------------

    async def _get_answers(
        self,
        path: str,
        endpoint: str,
        subject: str | None,
        *,
        lazy: bool = False,
        read_kept: bool = True,
        decode: bool = True,
    ) -> list[_Answer]:
        """Every page's answer, following `Link: rel="next"` (`lazy`, `decode`: see `_attempt`;
        `read_kept`: see `_report_page`).

        A next link to another origin than the base URL's is not requested: the request would
        carry the bearer token there. The pages kept so far are forgotten, as their cached
        headers hold the link.
        """
        answers: list[_Answer] = []
        url: str | None = path
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise PartnersApiError(endpoint, subject, f"pagination loops at {_one_line(url)}")
            seen.add(url)
            send = self._cached.get if read_kept else self._report_page
            answer = await self._get(send, url, endpoint, subject, lazy=lazy, decode=decode)
            if answer.body is None:
                raise PartnersApiError(endpoint, subject, "not found (404)")
            answers.append(answer)
            url = answer.next_url
            problem = next_link_problem(self._base_url, url) if url is not None else None
            if problem is not None:
                await self.forget(a.url for a in answers)
                raise PartnersApiError(endpoint, subject, problem)
        return answers

    async def _parse_pages(
        self,
        answers: list[_Answer],
        endpoint: str,
        subject: str | None,
        parse: Callable[[Any], contract.Parsed],
    ) -> Fetched:
        """The pages parsed; a page that cannot be is forgotten and fails the resource alone."""
        try:
            parsed = [parse(answer.body) for answer in answers]
        except Exception as error:  # any body, however hostile, costs this resource only
            await self.forget(answer.url for answer in answers)
            raise PartnersApiError(endpoint, subject, contract.unreadable_body(error)) from None
        return Fetched(
            records=pl.concat([p.records for p in parsed]),
            quarantine=pl.concat([p.quarantine for p in parsed]),
            not_modified=all(answer.not_modified for answer in answers),
        )

    async def _report_page(self, url: str) -> CachedPage | httpx.Response:
        """GET a report page through the cache, past httpx: hishel's RFC 9111 machine on the
        cache, and the look-ups' wire under it (`_get_uncached`). A 304 whose kept body has its
        digest kept too is not read back (`_kept_digest` gives the digest); any other answer is
        read whole, and a new body is kept inflated (`kept_report` reads either).

        What a quiet night's check makes a request per report of the catalogue for: through
        httpx's client, hishel's httpx transport and httpcore, a 304 cost ~2 ms of client CPU
        (benchmarks/quiet_check.py), more than its share of the API bound at 16 in flight.
        The entry's key and its stored request are the httpx path's, so either path finds
        what the other kept.
        """
        outgoing = self._cached.build_request("GET", url)
        absolute = str(outgoing.url)
        path = absolute.removeprefix(self._base_url)
        if not path.startswith("/"):  # a next link to the origin, outside the base URL's path
            return await self._cached.get(url)

        async def send(request: hishel.Request) -> hishel.Response:
            answer = await self._get_uncached(path, _revalidation(request.headers))
            return hishel.Response(
                status_code=answer.status_code,
                headers=_as_kept(answer.headers, len(answer.content)),
                stream=_chunks(answer.content),
            )

        kept, status = await handle_request_with_rfc(
            hishel.Request(
                method="GET", url=absolute, headers=_headers_to_internal(outgoing.headers)
            ),
            send,
            self._storage,
            _cache_key(absolute),
            CACHE_OPTIONS,
        )
        page = CachedPage(kept.status_code, kept.headers, None, absolute, status)
        if _unread_digest(page) is None:
            page.content = b"".join([chunk async for chunk in kept.stream])  # type: ignore[union-attr]
        return page

    async def _get_uncached(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> httpx.Response | LookupAnswer:
        """GET past the cache: on aiohttp (`lookups_wire`), or straight to the metered httpx wire
        when the client was given one. A refused token is signed anew once (the same as
        `PartnersJwtAuth.auth_flow`).

        Membership look-ups are most of a first sync's requests (a million on a large platform),
        each asked once ever, so caching them is waste; and httpx's stack cost ~1 ms of client
        CPU per look-up.

        A path only, never a URL: the token goes to the base URL's origin and nowhere else.
        """
        if not path.startswith("/"):
            raise ValueError("a path under the base URL is expected")
        for renew in (False, True):
            authorization = f"Bearer {self.auth.token(renew=renew)}"
            if self._lookups is not None:
                response: httpx.Response | LookupAnswer = await self._lookups.get(
                    path, authorization, headers
                )
            else:
                response = await self._send_uncached(path, authorization, headers)
            if response.status_code != 401:
                break
        return response

    async def _send_uncached(
        self, path: str, authorization: str, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """One GET to the metered httpx wire, past httpx's client layer (URL merging, cookie
        jar, auth generator, stream wrappers: a seventh of the CPU per look-up): what that layer
        did for us is done here (base URL, headers, timeout)."""
        request = httpx.Request(
            "GET",
            self._base_url + path,
            headers={**HEADERS, **(headers or {}), "Authorization": authorization},
            extensions={"timeout": self._timeout.as_dict()},
        )
        response = await self._capped.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _get(
        self,
        send: Callable[[str], Awaitable[Answer]],
        url: str,
        endpoint: str,
        subject: str | None,
        *,
        lazy: bool = False,
        decode: bool = True,
    ) -> _Answer:
        """GET with bounded retries: a 200 with its decoded body, or a 404 (no body).

        The first attempt is made here, outside tenacity: nearly every request succeeds at once,
        and building and driving a retry loop for each cost a sixth of a look-up's client CPU.
        Only a `_Retryable` enters the loop (`_retried`), which counts it as its first attempt.
        """
        started = time.monotonic()
        try:
            try:
                deadline = self._deadline(started)
                return await self._attempt(send, url, endpoint, deadline, lazy=lazy, decode=decode)
            except _Retryable as first:
                return await self._retried(
                    send, url, endpoint, subject, started, first, lazy=lazy, decode=decode
                )
        except BodyTooLarge as error:  # the same body again is as large: not retried
            await self.forget([str(self._cached.build_request("GET", url).url)])
            raise PartnersApiError(endpoint, subject, str(error)) from None

    def _deadline(self, started: float) -> float:
        """An attempt's deadline: its own timeout, never past the budget that began at `started`."""
        left = self.settings.max_retry_seconds - (time.monotonic() - started)
        return max(0.001, min(self.settings.timeout_seconds, left))

    async def _retried(
        self,
        send: Callable[[str], Awaitable[Answer]],
        url: str,
        endpoint: str,
        subject: str | None,
        started: float,
        first: _Retryable,
        *,
        lazy: bool,
        decode: bool,
    ) -> _Answer:
        """The attempts after the first, which began at `started` and failed with `first`.

        The loop's first attempt raises `first` again, unsent, so attempts are numbered, waited
        for (a Retry-After included) and counted in `metrics.retries` as if the loop had made
        it, and the budget runs from `started`.
        """
        settings = self.settings
        budget = settings.max_retry_seconds

        def budget_spent(state: RetryCallState) -> bool:  # stop_after_delay's, from `started`
            return (state.outcome_timestamp or time.monotonic()) - started >= budget

        retrying = AsyncRetrying(
            stop=stop_any(stop_after_attempt(settings.max_attempts), budget_spent),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=lambda _: self.metrics.retries.update([endpoint]),
            reraise=True,
        )
        last = first
        replay = True  # the loop's first attempt is the one `_get` made
        try:
            async for attempt in retrying:
                with attempt:
                    if replay:
                        replay = False
                        raise first
                    # Each attempt ends by its own deadline, and never outlives the budget: a
                    # Retry-After that spends it ends the request with the error that asked.
                    if time.monotonic() - started >= budget:
                        raise last
                    try:
                        return await self._attempt(
                            send, url, endpoint, self._deadline(started), lazy=lazy, decode=decode
                        )
                    except _Retryable as error:
                        last = error
                        raise
        except _Retryable as error:
            attempts = retrying.statistics.get("attempt_number", settings.max_attempts)
            elapsed = time.monotonic() - started
            raise PartnersApiError(
                endpoint, subject, f"{error} (gave up after {attempts} attempts in {elapsed:.1f} s)"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        send: Callable[[str], Awaitable[Answer]],
        url: str,
        endpoint: str,
        deadline_seconds: float,
        *,
        lazy: bool = False,
        decode: bool = True,
    ) -> _Answer:
        """One request, connect to the last byte of its body within `deadline_seconds`.

        httpx's read timeout is per chunk: a server dripping a byte every few seconds would keep
        a request alive for ever. This deadline is for the whole answer.

        `lazy`: a 304's body (the cached one) is not decoded, only digested: decoding is most of
        what an unchanged report costs. A body is decoded when it arrives (one that cannot be is
        forgotten and asked for again), except with `decode` False: the night's check asks only
        which reports changed, and the step that reads a changed one decodes it, forgetting it
        and asking again if it cannot (`RawReport.from_check`): each changed report's JSON is
        decoded once a night, not twice.
        """
        if self._limiter is not None:
            await self._limiter.acquire()
        async with self._slots:
            try:
                async with asyncio.timeout(deadline_seconds):
                    response = await send(url)
            except TimeoutError:
                raise _Retryable(f"no complete answer within {deadline_seconds:g} s") from None
            except httpx.TransportError as error:
                raise _Retryable(f"{type(error).__name__}: {error}") from None
        unread_digest = _unread_digest(response)
        if unread_digest is None and len(response.content) > self.settings.max_body_bytes:
            # Past the wire's cap when served from the cache, or inflated from a compressed body.
            raise BodyTooLarge(self.settings.max_body_bytes)
        if response.status_code == 401:
            raise PartnersApiError(
                endpoint,
                None,
                "token refused (401): check FL_PARTNERS_CONSUMER_KEY and _SECRET",
                fatal=True,
            )
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}", _retry_after_seconds(response))
        if response.status_code == 404:
            return _Answer(None, False, None, str(response.url))
        if response.status_code != 200:
            raise PartnersApiError(endpoint, None, f"unexpected HTTP {response.status_code}")
        not_modified = _not_modified(response)
        next_url = response.links.get("next", {}).get("url")
        url = str(response.url)
        if unread_digest is not None:
            return _Answer(_UNDECODED, True, next_url, url, unread_digest)
        # Only reports are digested (to know one is the same as last time), not look-ups.
        digest = hashlib.sha256(response.content).hexdigest() if lazy else ""
        if lazy and not_modified:
            if _kept_digest(response) is None:  # kept by a release that did not keep digests
                await self._remember_digest(url, response, digest)
            return _Answer(_UNDECODED, True, next_url, url, digest, response.content)
        if lazy and not decode:
            if _stored(response):
                await self._remember_digest(url, response, digest)
            return _Answer(_UNDECODED, False, next_url, url, digest, response.content)
        try:
            # Only reports are lazy. Look-ups and course_runs stay on json: orjson reads an
            # integer past 64 bits (an external id, say) as a float.
            body = (
                contract.decode_report(response.content) if lazy else json.loads(response.content)
            )
        except Exception as error:  # huge integers and deep nesting raise other than JSON errors
            # The cache may have kept a broken body under a good ETag: forget it, then retry.
            await self.forget([url])
            raise _Retryable(f"unreadable JSON: {contract.unreadable_body(error)}") from None
        if lazy and _stored(response):
            await self._remember_digest(url, response, digest)
        return _Answer(body, not_modified, next_url, url, digest)

    async def _remember_digest(self, url: str, response: httpx.Response, digest: str) -> None:
        """Keep a report page's digest with its newly stored body (see `_report_page`)."""
        etag = response.headers.get("etag")
        if etag is not None:
            await remember_body_digest(self._storage, _cache_key(url), etag, digest)

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(
            multiplier=self.settings.backoff_seconds, max=self.settings.max_backoff_seconds
        )(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(backoff, retry_after) if retry_after is not None else backoff

    async def forget(self, urls: Iterable[str]) -> None:
        """Drop these requests' responses from the cache: a body that could not be used must
        not come back tomorrow as a 304 (the same ETag) and fail the same way."""
        for url in urls:
            for entry in await self._storage.get_entries(_cache_key(url)):
                await self._storage.remove_entry(entry.id)


_UNDECODED = object()  # an _Answer's body left as bytes (`lazy`)


@dataclass(frozen=True)
class _Answer:
    body: Any  # None for a 404; _UNDECODED: see `content`
    not_modified: bool  # a 304 answered from the kept body
    next_url: str | None
    url: str = ""  # as requested: the key of its cache entry
    digest: str = ""  # sha256 of the body's bytes
    content: bytes = b""  # only when the body was left undecoded


class _CappedStream(httpx.AsyncByteStream):
    def __init__(
        self, stream: httpx.AsyncByteStream, max_bytes: int, inflated: Inflated | None
    ) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._inflated = inflated

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._stream:
            read += len(chunk)
            if read > self._max_bytes:
                raise BodyTooLarge(self._max_bytes)
            if self._inflated is not None:
                self._inflated.add(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """Refuses a body longer than `max_bytes`, as sent or once inflated: by its Content-Length
    before reading any of it, else as soon as what was read (or what it inflates to) passes the
    cap. A hostile body costs at most the cap."""

    def __init__(self, inner: httpx.AsyncBaseTransport, max_bytes: int) -> None:
        self._inner = inner
        self._max_bytes = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        # Only this client says what a kept body's digest is (`_kept_digest`), never a server.
        if BODY_DIGEST_HEADER in response.headers:
            del response.headers[BODY_DIGEST_HEADER]
        length = response.headers.get("Content-Length", "")
        try:
            if length.isdigit() and int(length) > self._max_bytes:
                raise BodyTooLarge(self._max_bytes)
            inflated = inflated_size_counter(response.headers, self._max_bytes)
        except BodyTooLarge:
            await response.aclose()
            raise
        response.stream = _CappedStream(response.stream, self._max_bytes, inflated)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class CachedPage:
    """A report page as `_report_page` answers it: the part of an `httpx.Response` that
    `_attempt` reads. `content` is None for a 304 whose kept body was left unread."""

    __slots__ = ("content", "extensions", "headers", "status_code", "url")

    def __init__(
        self,
        status_code: int,
        headers: hishel.Headers,
        content: bytes | None,
        url: str,
        status: CacheStatus,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.url = url
        self.extensions = {"caching": status}

    @property
    def links(self) -> dict[str, dict[str, str]]:
        link = self.headers.get("link")
        return {} if link is None else httpx.Response(200, headers={"link": link}).links


Answer = httpx.Response | LookupAnswer | CachedPage


def _revalidation(headers: hishel.Headers) -> dict[str, str]:
    return {name: headers[name] for name in REVALIDATION_HEADERS if name in headers}


def _as_kept(headers: Mapping[str, str] | httpx.Headers, length: int) -> hishel.Headers:
    """A response's headers as the cache keeps them with its body, read whole (`length` bytes,
    inflated)."""
    pairs = headers.multi_items() if isinstance(headers, httpx.Headers) else headers.items()
    kept: dict[str, list[str]] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered not in NOT_KEPT_HEADERS:
            kept.setdefault(lowered, []).append(value)
    kept["content-length"] = [str(length)]
    return hishel.Headers(kept)


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body


def or_failure(
    fetch: Callable[[str], Awaitable[Any]],
) -> Callable[[str], Awaitable[Any]]:
    """`fetch`, returning a request's final PartnersApiError instead of raising it (a refused
    token still raises: it fails every request, not one course's)."""

    async def fetched(key: str) -> Any:
        try:
            return await fetch(key)
        except PartnersApiError as error:
            if error.fatal:
                raise
            return error

    return fetched


def _not_modified(response: Answer) -> bool:
    status = response.extensions.get("caching") or {}
    return bool(status.get("from_cache") and status.get("revalidated"))


def _kept_digest(response: Answer) -> str | None:
    """The digest kept with a body served from the cache on a 304, if it was kept; None for any
    other answer, whose body is read."""
    if not _not_modified(response):
        return None
    return response.headers.get(BODY_DIGEST_HEADER) or None


def _unread_digest(response: Answer) -> str | None:
    """The kept digest of a 304 whose body `_report_page` left unread; None for a body read."""
    if not isinstance(response, CachedPage) or response.content is not None:
        return None
    return _kept_digest(response)


def _stored(response: Answer) -> bool:
    """A response the cache has just stored (a 200 it may answer a 304 with next time)."""
    status = response.extensions.get("caching") or {}
    return bool(status.get("stored"))


def _empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def run(coroutine: Awaitable[Any]) -> Any:
    """Run a client coroutine from synchronous code (a Dagster step, the CLI)."""
    return asyncio.run(coroutine)  # type: ignore[arg-type]
