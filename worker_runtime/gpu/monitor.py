"""Health-checks one instance while a job runs on it, in its own thread; the shared workloads listing."""

from __future__ import annotations

import threading
import time
from typing import Callable

from chalicelib.fleet.comput3 import Wait


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


class Listing:
    """The account's running workloads as Comput3's workloads API lists them, fetched at
    most once per ``ttl`` seconds and shared by every check this worker makes: the
    control-plane cost of health checks stays one call per interval per worker, however
    many checks run. ``fresh=True`` (a retry after a "not listed") fetches again."""

    def __init__(self, fetch: Callable[[], list[str]], ttl: float, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._ids: frozenset[str] = frozenset()

    def contains(self, workload: str, fresh: bool = False) -> bool:
        """Raises what ``fetch`` raises when a new listing is needed and cannot be had."""
        with self._lock:
            now = self._clock()
            if fresh or self._at is None or now - self._at >= self._ttl:
                self._ids = frozenset(self._fetch())
                self._at = now
            return workload in self._ids
