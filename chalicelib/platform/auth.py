"""API-key authentication and job ownership."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from chalicelib.platform.errors import Unauthorized

ANONYMOUS = "anonymous"


def owner_of(key: str) -> str:
    """What a job record stores for the key that created it: a hash, never the key."""
    return "key-sha256:" + hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-c3-render-key")
    if key:
        return key.strip()
    auth = headers.get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(headers: Mapping[str, str], keys: list[str]) -> str:
    """Return the owner id for the request; raise Unauthorized on a missing or wrong key.

    With no keys configured the API is open and every caller is one anonymous owner."""
    if not keys:
        return ANONYMOUS
    key = presented_key(headers)
    if key is None:
        raise Unauthorized("Missing API key: send X-C3-RENDER-KEY or Authorization: Bearer")
    # Compare against every configured key so timing does not reveal which matched.
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Unauthorized("Invalid API key")
    return owner_of(key)
