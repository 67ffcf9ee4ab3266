"""Every error the client raises has one root, ``C3RenderError``:

    C3RenderError                 message, status (HTTP status or None), details, body
     ├── APIError                 the server answered with an error status
     │    ├── InvalidRequest      400, 413, 415, 422: the request itself is wrong (fix it, do not retry)
     │    │    └── ValidationFailed 422: a field breaks a rule (details name field and rule)
     │    ├── Unauthorized        401
     │    ├── NotFound            404
     │    ├── Conflict            409 (job already final, result not ready, key reused)
     │    ├── RateLimited         429 (retry_after seconds), after the client's own retries
     │    └── ServerError         5xx, after the client's own retries
     ├── ConnectionFailed         no answer (refused, reset, timed out), after retries
     ├── DownloadFailed           the result file could not be fetched
     ├── WaitTimeout             the job was not final by the deadline (``last`` = last view)
     └── WebhookVerificationError a webhook's signature or timestamp is not acceptable
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class FieldError(BaseModel):
    """One entry of an error's ``details``: the field and the rule it broke."""

    model_config = ConfigDict(extra="allow")

    field: str = "body"
    message: str = ""


class C3RenderError(Exception):
    def __init__(self, message: str, status: int | None = None,
                 details: list[FieldError] | None = None, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details or []
        self.body = body or {}

    def __str__(self) -> str:
        head = f"{self.message} (HTTP {self.status})" if self.status else self.message
        return "; ".join([head, *(f"{d.field}: {d.message}" for d in self.details)])


class APIError(C3RenderError):
    pass


class InvalidRequest(APIError):
    pass


class ValidationFailed(InvalidRequest):
    pass


class Unauthorized(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    @property
    def job_status(self) -> str | None:
        return self.body.get("status")

    @property
    def job_error(self) -> str | None:
        return self.body.get("job_error")


class RateLimited(APIError):
    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    pass


class ConnectionFailed(C3RenderError):
    pass


class DownloadFailed(C3RenderError):
    pass


class WaitTimeout(C3RenderError):
    def __init__(self, message: str, last: Any = None):
        super().__init__(message)
        self.last = last


class WebhookVerificationError(C3RenderError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
    413: InvalidRequest, 415: InvalidRequest, 422: ValidationFailed, 429: RateLimited,
}


def error_from_response(status: int, body: Any, retry_after: float | None = None) -> APIError:
    """The error for an answer with an error status; ``body`` is its decoded JSON (or text)."""
    if not isinstance(body, dict):
        body = {"error": str(body or "").strip()[:500]}
    message = str(body.get("error") or f"HTTP {status}")
    raw = body.get("details")
    details = [FieldError.model_validate(d) for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    kwargs: dict[str, Any] = {"retry_after": retry_after} if cls is RateLimited else {}
    return cls(message, status=status, details=details, body=body, **kwargs)
