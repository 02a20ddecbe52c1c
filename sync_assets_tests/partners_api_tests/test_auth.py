"""The client's JWT: SPEC §2's claims, reused while fresh, renewed before it expires."""

from __future__ import annotations

import jwt

from sync_assets.partners_api.auth import RENEW_MARGIN_SECONDS, PartnersJwtAuth

SECRET = "a-consumer-secret-of-thirty-two-bytes"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})


def test_claims_are_the_contracts() -> None:
    auth = PartnersJwtAuth("partner-key", SECRET, clock=Clock(1_700_000_000.7))
    assert claims(auth.token()) == {
        "iss": "partner-key",
        "iat": 1_700_000_000,
        "exp": 1_700_000_090,
    }


def test_token_is_reused_while_fresh_and_renewed_before_expiry() -> None:
    clock = Clock(1_700_000_000)
    auth = PartnersJwtAuth("partner-key", SECRET, clock=clock)
    first = auth.token()
    clock.now += 90 - RENEW_MARGIN_SECONDS - 1
    assert auth.token() == first
    clock.now += 1  # inside the margin: never send a token about to expire
    renewed = auth.token()
    assert renewed != first and claims(renewed)["iat"] == clock.now
    assert auth.tokens_signed == 2


def test_repr_never_shows_the_secret() -> None:
    assert SECRET not in repr(PartnersJwtAuth("partner-key", SECRET))
