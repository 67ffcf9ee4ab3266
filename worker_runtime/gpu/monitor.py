"""Health-checks one instance while a job runs on it, in its own thread."""

from __future__ import annotations

import threading
from typing import Callable

from ..comput3 import Wait


class Monitor:
    """Every ``interval`` seconds runs ``check(wait)`` (None = healthy, else why; it does
    its own retry attempts, waiting through ``wait`` so ``stop()`` cuts them short). The
    first failure calls ``on_failure(reason)`` once and ends the monitor."""

    def __init__(self, check: Callable[[Wait], str | None], on_failure: Callable[[str], None],
                 interval: float, name: str):
        self._check = check
        self._on_failure = on_failure
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gpu-monitor-{name}", daemon=True)

    def start(self) -> "Monitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            reason = self._check(self._stopped.wait)
            if reason is None:
                continue
            if not self._stopped.is_set():
                self._on_failure(reason)
            return
