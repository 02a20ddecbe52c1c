"""The Partners API simulator: one request handler, reached in process or over loopback HTTP.

`PartnersApiSimulator.handle` answers a request exactly as SPEC §2 says: JSON bodies with hrefs
built from the base URL the request came to, weak ETags and `304` on `If-None-Match`, HS256 JWT
checks (issuer, signature, expiry → 401), `{"error":"not_found"}` 404s, optional RFC 8288
pagination of reports. Faults are decided here and carried out by each transport in its own medium
(a dropped connection really is dropped over HTTP).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import jwt

from sync_assets.partners_api.contract import route
from sync_assets.simulator.datasets import GeneratedDataset, Resource, SandboxDataset
from sync_assets.simulator.faults import STATUS_FAULTS, FaultPlan

SIMULATOR_CONSUMER_KEY = "sync-assets-simulator"
# Not a secret: the simulator's own credentials, the defaults when FL_PARTNERS_URL is unset.
SIMULATOR_CONSUMER_SECRET = "simulator-secret-not-for-production"

JSON_HEADERS = {"Content-Type": "application/json"}
CACHEABLE = {"Cache-Control": "max-age=0, private, must-revalidate"}


@dataclass
class SimulatedRequest:
    method: str
    url: str  # absolute: scheme://host[:port]/path?query
    headers: dict[str, str]  # lower-case names


@dataclass
class SimulatedResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    latency_ms: float = 0.0
    wire_fault: str | None = None  # "drop" or "truncate": for the transport to carry out


def _error(status: int, error: str, extra: dict[str, str] | None = None) -> SimulatedResponse:
    headers = {**JSON_HEADERS, "Cache-Control": "no-cache", **(extra or {})}
    return SimulatedResponse(status, headers, json.dumps({"error": error}).encode())


MAX_VERIFIED_TOKENS = 1_000  # a client signs a token every few minutes: a day's fit


@dataclass(frozen=True)
class _TokenTimes:
    """A verified token's times, checked as PyJWT checks them (no leeway)."""

    issued: int
    expires: int
    not_before: int | None

    @classmethod
    def of(cls, claims: dict[str, object]) -> _TokenTimes:
        # PyJWT has checked that each is an integer (or a string of one).
        nbf = claims.get("nbf")
        return cls(
            int(claims["iat"]),  # type: ignore[call-overload]
            int(claims["exp"]),  # type: ignore[call-overload]
            None if nbf is None else int(nbf),  # type: ignore[call-overload]
        )

    def valid_at(self, now: float) -> bool:
        if self.not_before is not None and self.not_before > now:
            return False
        return self.issued <= now < self.expires


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match or not etag:
        return False
    weak = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == weak for tag in if_none_match.split(","))


@dataclass
class PartnersApiSimulator:
    dataset: SandboxDataset | GeneratedDataset
    consumer_key: str = SIMULATOR_CONSUMER_KEY
    consumer_secret: str = SIMULATOR_CONSUMER_SECRET
    page_size: int | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    latency_ms: float = 0.0
    counts: Counter = field(default_factory=Counter)
    max_in_flight: int = 0
    _in_flight: int = 0
    _arrivals: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Tokens whose signature and issuer were checked: (token, key, secret) → their times. The
    # client sends one token for minutes; verifying it with PyJWT on every request was most of
    # what a look-up cost the simulator. Times are still checked on every request.
    _verified: dict[tuple[str, str, str], _TokenTimes] = field(default_factory=dict)

    # --- observability -------------------------------------------------------------------------

    def requests(self, endpoint: str | None = None, status: int | str | None = None) -> int:
        """How many requests were answered, optionally for one endpoint and status."""
        with self._lock:
            return sum(
                count
                for (seen_endpoint, seen_status), count in self.counts.items()
                if endpoint in (None, seen_endpoint) and status in (None, seen_status)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.max_in_flight = 0

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Transports wrap each request (latency included) in this, to measure concurrency."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def control(self, method: str, path: str) -> SimulatedResponse | None:
        """`/_simulator/…`: drive and read a simulator running in another process."""
        if not path.startswith("/_simulator/"):
            return None
        action = path.removeprefix("/_simulator/")
        if method == "POST" and action == "advance_day":
            result: object = self.advance_day()
        elif method == "POST" and action == "reset_counts":
            self.reset_counts()
            result = {"reset": True}
        elif method == "GET" and action == "counts":
            with self._lock:
                result = {
                    "requests": [
                        {"endpoint": endpoint, "status": status, "count": count}
                        for (endpoint, status), count in sorted(self.counts.items(), key=str)
                    ],
                    "max_in_flight": self.max_in_flight,
                }
        else:
            return _error(404, "not_found")
        return SimulatedResponse(200, dict(JSON_HEADERS), json.dumps(result).encode())

    def advance_day(self) -> dict[str, int]:
        if not isinstance(self.dataset, GeneratedDataset):
            raise TypeError("the sandbox dataset is a recording: time does not move in it")
        with self._lock:
            return self.dataset.advance_day()

    # --- the handler ---------------------------------------------------------------------------

    def handle(self, request: SimulatedRequest) -> SimulatedResponse:
        parts = urlsplit(request.url)
        base_url = f"{parts.scheme}://{parts.netloc}"
        endpoint, key = route(parts.path)
        with self._lock:
            self._arrivals[endpoint] += 1
            decision = self.faults.decide(endpoint, self._arrivals[endpoint])
        response = self._respond(
            request,
            endpoint,
            key,
            base_url,
            parse_qs(parts.query),
            decision.kind,
            decision.retry_after,
        )
        response.latency_ms += self.latency_ms + decision.latency_ms
        with self._lock:
            self.counts[(endpoint, response.wire_fault or response.status)] += 1
        return response

    def _authorised(self, request: SimulatedRequest) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        key = (token, self.consumer_key, self.consumer_secret)
        verified = self._verified.get(key)
        if verified is not None:
            return verified.valid_at(time.time())
        try:
            claims = jwt.decode(
                token,
                self.consumer_secret,
                algorithms=["HS256"],
                issuer=self.consumer_key,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        with self._lock:
            if len(self._verified) >= MAX_VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[key] = _TokenTimes.of(claims)
        return True

    def _respond(
        self,
        request: SimulatedRequest,
        endpoint: str,
        key: str | None,
        base_url: str,
        query: dict[str, list[str]],
        fault: str | None,
        retry_after: int,
    ) -> SimulatedResponse:
        if request.method != "GET":
            return _error(405, "method_not_allowed")
        if fault == "refuse_token" or not self._authorised(request):
            return _error(401, "unauthorized")
        if fault == "429":
            return _error(429, "too_many_requests", {"Retry-After": str(retry_after)})
        if fault in STATUS_FAULTS:
            return _error(int(fault), "server_error")
        if fault == "drop":
            return SimulatedResponse(0, {}, wire_fault="drop")

        resource, link = self._resource(endpoint, key, base_url, query)
        if resource is None:
            return _error(404, "not_found")
        headers = {**JSON_HEADERS, **CACHEABLE, "ETag": resource.etag}
        if link:
            headers["Link"] = link
        if _etag_matches(request.headers.get("if-none-match"), resource.etag):
            return SimulatedResponse(304, {k: v for k, v in headers.items() if k != "Content-Type"})
        body = resource.body
        if fault == "malformed":
            body = body[: max(1, len(body) // 2)] + b"<html>oops"
        response = SimulatedResponse(200, headers, body)
        if fault == "truncate":
            response.wire_fault = "truncate"
        return response

    def _resource(
        self, endpoint: str, key: str | None, base_url: str, query: dict[str, list[str]]
    ) -> tuple[Resource | None, str | None]:
        dataset = self.dataset
        if endpoint == "course_runs":
            return dataset.course_runs(base_url), None
        if endpoint == "course_run" and key:
            return dataset.course_run(key, base_url), None
        if endpoint == "organisation_membership" and key:
            return dataset.membership(key, base_url), None
        if endpoint == "course_enrolments_report" and key:
            if not self.page_size:
                return dataset.enrolments_report(key, base_url), None
            size = dataset.report_size(key)
            if size is None:
                return None, None
            page = max(1, int(query.get("page", ["1"])[0] or 1))
            offset = (page - 1) * self.page_size
            resource = dataset.enrolments_report(key, base_url, offset, self.page_size)
            link = None
            if offset + self.page_size < size:
                path = f"/partners/course_runs/{key}/course_enrolments_report"
                link = f'<{base_url}{path}?page={page + 1}>; rel="next"'
            return resource, link
        return None, None
