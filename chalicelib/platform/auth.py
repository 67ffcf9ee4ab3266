"""API-key authentication and job ownership."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner id its jobs are stored under, and whether its key is
    an operator key (C3_RENDER_OPERATOR_KEYS), which sees and acts on every tenant's jobs."""

    owner: str
    operator: bool = False

    @property
    def scope(self) -> str | None:
        """The owner a job must have to be this caller's; None: any (an operator)."""
        return None if self.operator else self.owner


def _matches(key: str, candidates: list[str]) -> bool:
    matched = False
    for candidate in candidates:  # every one compared: timing does not reveal which matched
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    return matched


def identify(headers: Mapping[str, str], keys: list[str], operator_keys: list[str]) -> Caller:
    """The caller of a request; Unauthorized on a missing or wrong key.

    A tenant key (C3_RENDER_API_KEY) sees its own jobs; an operator key sees every tenant's,
    and its own submissions are its own. With no keys configured the API is open (local
    development): every caller is one anonymous tenant."""
    key = presented_key(headers)
    if key is not None and operator_keys and _matches(key, operator_keys):
        return Caller(owner_of(key), operator=True)
    if not keys:
        return Caller(ANONYMOUS)  # only operator keys configured: tenants' requests are open
    return Caller(authenticate(headers, keys))


def tenant_label(owner: str) -> str:
    """How the operators' views name a job's owner: the hash's first 12 hex digits (the
    sha256 of a key, which its holder can compute; never the key)."""
    prefix = "key-sha256:"
    return owner[:len(prefix) + 12] if owner.startswith(prefix) else owner
