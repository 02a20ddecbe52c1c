"""What a sync asked of the Partners API: requests by endpoint and status, retries, 304s, bytes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from sync_assets.partners_api.contract import route


@dataclass
class ApiMetrics:
    requests: Counter = field(default_factory=Counter)  # (endpoint, status or error name)
    retries: Counter = field(default_factory=Counter)  # endpoint
    bytes_received: int = 0

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def not_modified(self) -> int:
        return sum(count for (_, status), count in self.requests.items() if status == 304)

    def count(self, endpoint: str | None = None, status: int | str | None = None) -> int:
        return sum(
            number
            for (seen_endpoint, seen_status), number in self.requests.items()
            if endpoint in (None, seen_endpoint) and status in (None, seen_status)
        )

    def as_dict(self) -> dict[str, object]:
        """Flat and JSON-friendly, for asset metadata and summaries (no uuids, no tokens)."""
        return {
            "requests": self.total_requests,
            "not_modified_304": self.not_modified,
            "retries": sum(self.retries.values()),
            "bytes_received": self.bytes_received,
            "by_endpoint_and_status": {
                f"{endpoint} {status}": count
                for (endpoint, status), count in sorted(self.requests.items(), key=str)
            },
        }


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, metrics: ApiMetrics) -> None:
        self._stream = stream
        self._metrics = metrics

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._metrics.bytes_received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class MeteringTransport(httpx.AsyncBaseTransport):
    """Counts every request that reaches the wire, below the cache: a 304 is counted as a 304."""

    def __init__(self, inner: httpx.AsyncBaseTransport, metrics: ApiMetrics) -> None:
        self._inner = inner
        self.metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint, _ = route(request.url.path)
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as error:
            self.metrics.requests[(endpoint, type(error).__name__)] += 1
            raise
        self.metrics.requests[(endpoint, response.status_code)] += 1
        response.stream = _CountingStream(response.stream, self.metrics)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
