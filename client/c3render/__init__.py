"""Python SDK for the c3-render API: ``Client`` (one method per route), the answer models,
the error tree (``errors``) and webhook verification (``webhooks.verify``)."""

__version__ = "0.1.0"

from ._http import NO_RETRIES, RetryPolicy  # noqa: E402
from .client import Client  # noqa: E402
from .errors import (  # noqa: E402
    APIError,
    C3RenderError,
    Conflict,
    ConnectionFailed,
    DownloadFailed,
    FieldError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
    WebhookVerificationError,
)
from .models import (  # noqa: E402
    Batch,
    BatchItemAnswer,
    BatchSubmitted,
    Cost,
    Deliveries,
    DeliveryAttempt,
    Health,
    Job,
    JobPage,
    JobStatus,
    JobType,
    Message,
    Redelivery,
    Result,
    Usage,
    UsageLine,
    WebhookState,
)

__all__ = [
    "APIError", "Batch", "BatchItemAnswer", "BatchSubmitted", "C3RenderError", "Client", "Conflict",
    "ConnectionFailed", "Cost", "Deliveries", "DeliveryAttempt", "DownloadFailed", "FieldError", "Redelivery",
    "Usage", "UsageLine",
    "Health", "InvalidRequest", "Job", "JobPage", "JobStatus", "JobType", "Message", "NO_RETRIES",
    "NotFound", "RateLimited", "Result", "RetryPolicy", "ServerError", "Unauthorized", "ValidationFailed",
    "WaitTimeout", "WebhookState", "WebhookVerificationError", "__version__",
]
