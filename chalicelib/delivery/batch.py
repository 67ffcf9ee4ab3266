"""Lambda's partial batch response for SQS handlers, in one place.

Each record is handled on its own; a record whose handling raises is listed in
``batchItemFailures`` (the event source mappings have ReportBatchItemFailures on),
so SQS delivers only that one again and, past maxReceiveCount, dead-letters it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from chalicelib.platform.logs import EventLogger


def partial_batch(records: Iterable[dict[str, Any]], handle: Callable[[dict[str, Any]], Any],
                  log: EventLogger, event: str, concurrency: int = 1) -> dict[str, Any]:
    """``handle`` each record (up to ``concurrency`` at once); ``{"batchItemFailures"}`` out."""
    records = list(records)
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(records)))) as pool:
        futures = [(record, pool.submit(handle, record)) for record in records]
    failures = []
    for record, future in futures:
        exc = future.exception()
        if exc is None:
            continue
        log.error(event, message_id=record.get("messageId"),
                  receive_count=record.get("attributes", {}).get("ApproximateReceiveCount"),
                  reason=f"{type(exc).__name__}: {exc}; the message will be delivered again")
        failures.append({"itemIdentifier": record.get("messageId", "")})
    return {"batchItemFailures": failures}
