"""The Partners API's bearer token: an HS256 JWT the client signs itself (SPEC §2)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator

import httpx
import jwt

TOKEN_LIFETIME_SECONDS = 90
# Renew this long before expiry, so a token never expires between signing and arrival.
RENEW_MARGIN_SECONDS = 20


class PartnersJwtAuth(httpx.Auth):
    """Signs `{"iss": key, "iat": now, "exp": now + 90}`; on a 401, retries once, newly signed."""

    def __init__(
        self, consumer_key: str, consumer_secret: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = consumer_key
        self._secret = consumer_secret
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_signed = 0

    def __repr__(self) -> str:  # never the secret
        return f"PartnersJwtAuth(consumer_key={self._key!r})"

    def token(self, *, renew: bool = False) -> str:
        with self._lock:
            now = self._clock()
            if renew or self._token is None or now >= self._expires_at - RENEW_MARGIN_SECONDS:
                issued = int(now)
                claims = {"iss": self._key, "iat": issued, "exp": issued + TOKEN_LIFETIME_SECONDS}
                self._token = jwt.encode(claims, self._secret, algorithm="HS256")
                self._expires_at = issued + TOKEN_LIFETIME_SECONDS
                self.tokens_signed += 1
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(renew=True)}"
            yield request
