"""One keep-alive connection per fan-out worker.

httpcore's connection pool walks every pooled connection twice per request, and asks each idle one
whether its socket is readable (a system call through anyio's attribute lookup). With sixteen
workers sharing one pool that walk was a third of the client's CPU on membership look-ups, and the
client — not the API — set the pace. A worker that owns its connection walks a pool of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import httpx

_lane: ContextVar[int | None] = ContextVar("partners_api_lane", default=None)


@contextlib.contextmanager
def lane(number: int) -> Iterator[None]:
    """Requests made inside (by this task) go through connection lane `number`."""
    token = _lane.set(number)
    try:
        yield
    finally:
        _lane.reset(token)


class LanedTransport(httpx.AsyncBaseTransport):
    """`lanes` single-connection transports for workers, and a shared pool for everything else."""

    def __init__(self, lanes: int, make: Callable[[int], httpx.AsyncBaseTransport]) -> None:
        # `make(connections)` builds one transport; share anything costly (an SSL context) in it.
        self._lanes = [make(1) for _ in range(lanes)]
        self._shared = make(max(lanes, 1))

    def _for_this_task(self) -> httpx.AsyncBaseTransport:
        number = _lane.get()
        if number is None or not 0 <= number < len(self._lanes):
            return self._shared
        return self._lanes[number]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._for_this_task().handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (*self._lanes, self._shared):
            await transport.aclose()
