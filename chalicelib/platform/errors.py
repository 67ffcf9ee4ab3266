"""One error root for the domain; the API maps each class onto one HTTP status.

    C3RenderError
     ├── InvalidRequest      400/422  bad input, with per-field details
     ├── PayloadTooLarge     413
     ├── Unauthorized        401
     ├── NotFound            404
     ├── Forbidden           403      a result link that does not open this job
     ├── Conflict            409      a state-machine transition lost or is illegal
     └── TooManyRequests     429      the key has its cap of jobs in flight (Retry-After)
"""

from __future__ import annotations

from typing import Any


class C3RenderError(Exception):
    status_code = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str, details: list[dict[str, str]] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details:
            body["details"] = self.details
        body.update(self.extra)
        return body


class InvalidRequest(C3RenderError):
    status_code = 400


class UnprocessableRequest(InvalidRequest):
    """Well-formed JSON whose fields break a rule."""

    status_code = 422


class PayloadTooLarge(C3RenderError):
    status_code = 413


class Unauthorized(C3RenderError):
    status_code = 401


class NotFound(C3RenderError):
    status_code = 404


class Conflict(C3RenderError):
    status_code = 409


class Forbidden(C3RenderError):
    status_code = 403


class TooManyRequests(C3RenderError):
    status_code = 429

    def __init__(self, message: str, details: list[dict[str, str]], retry_after: int, **extra: Any):
        super().__init__(message, details, **extra)
        self.headers = {"Retry-After": str(retry_after)}
