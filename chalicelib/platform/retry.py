"""Bounded retries for transient AWS errors (throttles, 5xx, dropped connections).

botocore already retries each call a few times; these wrap the steps a job cannot
afford to lose (claim, final write, ack, the outbox sends) in a longer, still
bounded, budget. Anything that is not transient (a lost condition, a bad request,
a missing resource) is raised at once."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from chalicelib.platform.logs import get_logger

log = get_logger("c3.retry")
T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "LimitExceededException", "SlowDown", "InternalError",
    "InternalFailure", "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException", "TransactionInProgressException",
})
CONNECTION_ERRORS = (ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def retry_transient(fn: Callable[..., T], *args: Any, attempts: int = 6, max_wait: float = 5.0,
                    what: str = "", **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, again after a transient error, ``attempts`` times at most
    with jittered exponential waits (0.2 s doubling up to ``max_wait``)."""
    def before_sleep(state: Any) -> None:
        log.warning("aws.retry", step=what or getattr(fn, "__name__", "call"),
                    attempt=state.attempt_number, of=attempts,
                    reason=f"{type(state.outcome.exception()).__name__}: {state.outcome.exception()}")

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(initial=0.2, max=max_wait),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)
