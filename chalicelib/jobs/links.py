"""Result links that live as long as the seed promises (PRESIGN_EXPIRES, 7 days).

A presigned S3 URL dies with the credentials that signed it: on AWS a role's
temporary credentials last hours. A result link instead names the job and its own
expiry, signed with the API's secret; ``GET /results/{id}?expires=&token=`` checks
it and answers 302 to a URL presigned there and then, by whatever role runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Callable
from urllib.parse import urlencode


class ResultLinks:
    def __init__(self, secret: str, base_url: str | None, lifetime: int, clock: Callable[[], float]):
        self._key = hashlib.sha256(b"c3-render result links\n" + secret.encode()).digest()
        self.base_url = base_url.rstrip("/") if base_url else None
        self.lifetime = lifetime
        self._clock = clock

    def token(self, job_id: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{job_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def link(self, job_id: str, base_url: str | None = None) -> str | None:
        """The link for ``job_id``, valid for ``lifetime`` seconds; None without a base URL."""
        base = (base_url or self.base_url or "").rstrip("/")
        if not base:
            return None
        expires = int(self._clock()) + self.lifetime
        query = urlencode({"expires": expires, "token": self.token(job_id, expires)})
        return f"{base}/results/{job_id}?{query}"

    def problem(self, job_id: str, expires: str | None, token: str | None) -> str | None:
        """Why a link's ``expires``/``token`` do not open ``job_id``, or None if they do."""
        if not expires or not token:
            return "the link needs its expires and token parameters"
        try:
            when = int(expires)
        except ValueError:
            return "expires must be a whole number of seconds"
        if not hmac.compare_digest(self.token(job_id, when).encode(), token.encode("utf-8", "replace")):
            return "the token does not match this job and expiry"
        now = self._clock()
        if when < now:
            return "the link has expired; GET /result/{id} gives a new one"
        if when > now + self.lifetime:
            return f"expires is more than PRESIGN_EXPIRES ({self.lifetime} s) from now"
        return None
