"""The GPU code's background threads: each step guarded so the thread outlives a hiccup."""

from __future__ import annotations

import threading
from typing import Callable

from chalicelib.platform.logs import EventLogger


def safely(step: Callable[[], object], what: str, log: EventLogger, after: str = "retried next time") -> None:
    """``after``: what follows a failure (the log line's reason)."""
    try:
        step()
    except Exception:  # noqa: BLE001 - the keeper must outlive a DynamoDB or Comput3 hiccup
        log.error("gpu.keeper_step_failed", step=what, exc_info=True, reason=after)


def start_daemon(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def in_background(step: Callable[[], object], what: str, log: EventLogger) -> None:
    """A best-effort write off the job's path (what the idle policy learns: an arrival, a
    boot time): the job never waits for its DynamoDB round trips or their retries."""
    start_daemon(lambda: safely(step, what, log, after="the idle policy learns one sample fewer"),
                 f"gpu-{what.replace(' ', '-')}")
