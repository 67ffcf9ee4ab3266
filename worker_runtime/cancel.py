"""A cancel signal shared by the supervisor and a running task."""

from __future__ import annotations

import threading
from typing import Callable

from chalicelib.platform.logs import get_logger

from .stops import Stop

log = get_logger("c3.cancel")


class CancelToken:
    """Set once, with a reason; callbacks map it onto remote cancel calls
    (ComfyUI /interrupt, Gradio job cancel, ...)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None
        # The tenant's text for the reason, when the reason names what tenants never see
        # (a GPU node's name or workload id: worker_runtime/tenant_errors.py).
        self.public: str | None = None
        # Why it was stopped; what follows is in worker_runtime/stops.py (RULES).
        self.kind: Stop | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str, kind: Stop | str, public: str | None = None) -> bool:
        """Returns True for the first caller only."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self.public = public
            self.kind = Stop(kind)
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a failing remote cancel must not hide the reason
                log.warning("cancel.callback_failed", reason=reason, exc_info=True)
        return True

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled(self.reason or "cancelled")


class TaskCancelled(Exception):
    """Raised inside a task that noticed its cancel token."""
