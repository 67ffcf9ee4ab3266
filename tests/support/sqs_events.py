"""Reading event queues in tests: receive (and delete) JSON messages from a queue."""

from __future__ import annotations

import json
import time
from typing import Any

from chalicelib.platform.queue import Queue


def take(sqs: Any, queue: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until ``count`` messages arrived on ``queue``; return their JSON bodies (deleted)."""
    q = Queue(sqs, queue)
    got: list[dict[str, Any]] = []
    deadline = time.time() + timeout
    while len(got) < count and time.time() < deadline:
        for m in q.receive(wait_seconds=1, visibility=30, max_messages=10):
            got.append(json.loads(m.body))
            q.delete(m.receipt)
    assert len(got) >= count, f"expected {count} messages on {queue}, got {got}"
    return got


def drain(sqs: Any, queue: str) -> list[dict[str, Any]]:
    """Every message visible on ``queue`` now (deleted), without waiting for more."""
    q = Queue(sqs, queue)
    got: list[dict[str, Any]] = []
    while True:
        batch = q.receive(wait_seconds=0, visibility=30, max_messages=10)
        if not batch:
            return got
        for m in batch:
            got.append(json.loads(m.body))
            q.delete(m.receipt)


def depth(sqs: Any, queue: str) -> int:
    """Visible plus in-flight messages: zero means the queue holds nothing at all."""
    counts = Queue(sqs, queue).depth()
    return counts["messages"] + counts["in_flight"]
