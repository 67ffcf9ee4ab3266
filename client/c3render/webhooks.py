"""Verify a c3-render webhook per Standard Webhooks (https://www.standardwebhooks.com/).

The server signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 and sends
``webhook-signature: v1,<base64 digest>`` (several space-separated signatures may be present,
e.g. during a secret rotation). A ``whsec_`` secret is base64-decoded first.

    payload = verify(secret, request.headers, request.body)   # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping

from .errors import WebhookVerificationError

DEFAULT_TOLERANCE = 300  # seconds either side of now


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error:
            raise WebhookVerificationError("The whsec_ secret is not valid base64") from None
    return secret.encode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"Missing {name} header")


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes | str,
           tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> Any:
    """Check the signature and timestamp of one delivery and return its decoded JSON payload.

    ``body`` must be the raw request body, byte for byte as received. Raises
    WebhookVerificationError naming what is wrong (missing header, timestamp outside
    ``tolerance`` seconds, no matching signature)."""
    if not secret:
        raise WebhookVerificationError("No webhook secret given")
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {raw_ts!r} is not an integer") from None
    skew = (time.time() if now is None else now) - timestamp
    if skew > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is {skew:.0f}s old (tolerance {tolerance:g}s)")
    if skew < -tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is {-skew:.0f}s in the future (tolerance {tolerance:g}s)")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = hmac.new(_secret_bytes(secret), f"{msg_id}.{raw_ts}.".encode() + raw, hashlib.sha256).digest()
    matched = False
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        matched |= hmac.compare_digest(given, expected)  # no early exit: constant time over the list
    if not matched:
        raise WebhookVerificationError("No webhook-signature matches the body (wrong secret or altered body)")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("The signed body is not JSON") from None
