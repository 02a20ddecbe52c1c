"""The response body cap (FL_PARTNERS_MAX_BODY_BYTES), as sent and once inflated: shared by the
httpx transports (`client.CappedTransport`) and the look-ups' aiohttp path (`lookups_wire`)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping


class BodyTooLarge(Exception):
    """A response body past `ClientSettings.max_body_bytes`: not read on, not retried."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"body larger than {max_bytes:,} bytes (FL_PARTNERS_MAX_BODY_BYTES), not read"
        )


class Inflated:
    """Counts what a gzip or deflate body inflates to, as its compressed chunks arrive.

    httpx inflates above the transports, after the whole compressed body is in: a small "zip
    bomb" (a ratio of ~1000:1) would be inflated whole before any cap on its length could see it.
    Counting here, a chunk at a time and never more than the cap's worth of output per step,
    refuses it while it is still small. httpx inflates only gzip and deflate here (no brotli or
    zstandard installed); any other coding reaches the parser as the bytes the cap counted.
    """

    def __init__(self, coding: str, max_bytes: int) -> None:
        wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)
        self._max_bytes = max_bytes
        self._size = 0

    def add(self, chunk: bytes) -> None:
        pending = chunk
        try:
            while pending:
                out = self._inflater.decompress(pending, self._max_bytes - self._size + 1)
                self._size += len(out)
                if self._size > self._max_bytes:
                    raise BodyTooLarge(self._max_bytes)
                pending = self._inflater.unconsumed_tail
        except zlib.error:
            pending = b""  # not what it says it is: httpx's own decoder will refuse it


def inflated_size_counter(headers: Mapping[str, str], max_bytes: int) -> Inflated | None:
    """A counter when the body is compressed once with a coding httpx inflates, else None.

    A body compressed twice (`gzip, gzip`) is refused: each layer multiplies the ratio, and no
    API of ours sends one.
    """
    codings = [
        value.strip().lower()
        for value in headers.get("Content-Encoding", "").split(",")
        if value.strip().lower() not in ("", "identity")
    ]
    inflated = [coding for coding in codings if coding in ("gzip", "x-gzip", "deflate")]
    if len(inflated) > 1:
        raise BodyTooLarge(max_bytes)
    return Inflated(inflated[0], max_bytes) if inflated else None


def inflate(headers: Mapping[str, str], body: bytes) -> bytes:
    """`body` inflated as its gzip or deflate Content-Encoding says (as httpx would), or as it
    is without one; raises `zlib.error` when it does not inflate. Only for a body whose
    inflated size was counted under the cap (`inflated_size_counter`) as it arrived."""
    coding = headers.get("Content-Encoding", "").lower()
    if "gzip" in coding:
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if "deflate" not in coding:
        return body
    try:
        return zlib.decompress(body)
    except zlib.error:  # "deflate" sent raw, without the zlib wrapper (as httpx accepts)
        return zlib.decompress(body, -zlib.MAX_WBITS)
