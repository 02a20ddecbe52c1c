"""Membership look-ups on aiohttp: the one request a first sync makes a million times.

Each look-up is a small JSON body, asked once ever (no cache). Through httpx's transport stack
(httpcore, h11, anyio) one cost ~1 ms of client CPU, which at 16 in flight over 20 ms bounds
a first sync by the client, not the API; aiohttp parses with llhttp in C. The night's check of
the reports comes here too, under the cache (`PartnersApiClient._report_page`): a quiet night
asks for every report of the catalogue. The rest (the steps' report reads, the runs list) stays
on httpx.

What the httpx path guaranteed is kept here: only the base URL's origin is connected to, no
redirect is followed, no cookie is kept, no proxy or netrc is read from the environment, a body
past the cap is refused (as sent or once inflated) without being read on, every request that
reaches the wire is counted by endpoint and status, and every failure to get an answer surfaces
as an `httpx.TransportError`, so `PartnersApiClient._attempt` retries it as it does httpx's.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Mapping
from types import MappingProxyType

import aiohttp
import httpx
from yarl import URL

from sync_assets.partners_api.body_cap import BodyTooLarge, inflate, inflated_size_counter
from sync_assets.partners_api.contract import route
from sync_assets.partners_api.metrics import ApiMetrics

NO_LINKS: Mapping[str, Mapping[str, str]] = MappingProxyType({})
# A path of these characters only (a look-up's) is already encoded and has no dot segment to
# normalise: parsing it is left out (see `LookupWire.url`).
PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_~-]+)+")


class LookupAnswer:
    """The part of an `httpx.Response` that `PartnersApiClient._attempt` reads, for a look-up
    (one page, never from the cache): building a real one costs a URL parse per look-up."""

    __slots__ = ("content", "headers", "status_code", "url")
    links = NO_LINKS  # a look-up is one resource, never paginated
    extensions: Mapping[str, object] = MappingProxyType({})  # never a cache hit

    def __init__(
        self, status_code: int, headers: Mapping[str, str], content: bytes, url: str
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.url = url


class LookupWire:
    """One aiohttp session (opened on first use, inside the running loop) for GETs of paths
    under `base_url`."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        connections: int,
        timeout_seconds: float,
        max_body_bytes: int,
        metrics: ApiMetrics,
        tls: ssl.SSLContext,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        base = URL(self._base_url)
        self._origin = base.origin()
        # `url`'s start for a plain path; None when the base URL has a query or a fragment,
        # which `with_path` would drop and joining does not.
        self._base = None if base.raw_query_string or base.raw_fragment else base
        self._base_path = base.raw_path.rstrip("/")
        # httpx inflates gzip and deflate (no brotli or zstandard here); so does `_inflate`.
        self._headers = {**headers, "Accept-Encoding": "gzip, deflate"}
        self._connections = max(1, connections)
        # Per phase, as httpx's: `_attempt`'s deadline bounds the whole answer.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_seconds, sock_read=timeout_seconds
        )
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._tls),
                headers=self._headers,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # inflated here, counted against the cap as it arrives
                trust_env=False,
            )
            # aiohttp resends a request once, unseen, when a kept-alive connection drops: that
            # request would reach the wire uncounted and unretried by our rules (the same switch
            # aiohttp's own test client turns off; a drop is retried by `_attempt`, counted).
            self._session._retry_connection = False
        return self._session

    def url(self, path: str) -> URL:
        """Base URL + `path`, which must be a path: the token goes to the base URL's origin only.

        A plain path (`PLAIN_PATH`) is put after the base URL's, parsed once: the URL parsing the
        two joined gives, by construction at the base URL's origin, for a seventh of the CPU (a
        look-up's uuid is a new string each time, so yarl's cache of parses never hits).
        """
        if self._base is not None and PLAIN_PATH.fullmatch(path):
            return self._base.with_path(self._base_path + path, encoded=True)
        parsed = URL(self._base_url + path)
        if not path.startswith("/") or parsed.origin() != self._origin:
            raise ValueError("a path under the base URL is expected")
        return parsed

    async def get(
        self, path: str, authorization: str, headers: Mapping[str, str] | None = None
    ) -> LookupAnswer:
        """GET base URL + `path` (see `url`), with `headers` besides the session's (a report
        page's revalidation)."""
        parsed = self.url(path)
        url = self._base_url + path
        endpoint, _ = route(parsed.path)
        try:
            response = await self._opened().get(
                parsed,
                headers={**(headers or {}), "Authorization": authorization},
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            failure = _transport_error(error)
            self._metrics.requests[(endpoint, type(failure).__name__)] += 1
            raise failure from error
        self._metrics.requests[(endpoint, response.status)] += 1
        try:
            content = await self._read(response)
        except BaseException:
            response.close()  # the rest of the body unread: the connection is not reused
            raise
        response.release()
        return LookupAnswer(response.status, response.headers, content, url)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, refused once past the cap as sent or once inflated (as `CappedTransport`)."""
        cap = self._max_body_bytes
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise BodyTooLarge(cap)
        inflated = inflated_size_counter(response.headers, cap)
        chunks: list[bytes] = []
        read = 0
        try:
            async for chunk in response.content.iter_any():
                self._metrics.bytes_received += len(chunk)
                read += len(chunk)
                if read > cap:
                    raise BodyTooLarge(cap)
                if inflated is not None:
                    inflated.add(chunk)
                chunks.append(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _transport_error(error) from error
        body = b"".join(chunks)
        # No body (a 304's) is nothing to inflate, whatever its Content-Encoding says.
        return body if inflated is None or not body else _inflate(response.headers, body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _inflate(headers: Mapping[str, str], body: bytes) -> bytes:
    """A gzip or deflate body inflated; its size was counted under the cap on arrival, so this
    holds at most the cap. A body that does not inflate is read again, as a truncated one."""
    try:
        return inflate(headers, body)
    except zlib.error:
        raise httpx.ReadError("the body does not inflate") from None


def _transport_error(error: BaseException) -> httpx.TransportError:
    """aiohttp's (or the socket's) error as the httpx one `_attempt` retries, with its words."""
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(error, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return httpx.ConnectError(message)
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    return httpx.ReadError(message)
