"""Pseudonyms: how users are named in metadata, logs and alerts, never by id or email.

Platform user ids can be a learner's external id (LTI launches), so metadata shows a keyed
digest (HMAC) instead, which no one without the key can compute from a list of ids.
"""

from __future__ import annotations

import hashlib
import hmac

from sync_assets.settings import pseudonym_key

# 16 hex characters, 64 bits: two users of a platform sharing a pseudonym is then unlikely.
PSEUDONYM_HEX_CHARS = 16


def pseudonym(value: str | None, key: bytes | None = None) -> str | None:
    """`user:` and the HMAC-SHA256 of `value` under SYNC_ASSETS_PSEUDONYM_KEY (or `key`).

    A plain hash of a user id could be reversed by hashing every id of the platform; without the
    key it cannot. The same key gives the same pseudonym in every run and process.
    """
    if value is None:
        return None
    digest = hmac.new(key or pseudonym_key(), value.encode(), hashlib.sha256).hexdigest()
    return "user:" + digest[:PSEUDONYM_HEX_CHARS]
