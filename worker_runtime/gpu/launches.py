"""The steps every launch shares, for a job (manager) or ahead of the queue (keeper):
a unique ``expires``, the launch call that honours a cancel, the boot wait on the node's own
health URL, the duplicate sweep, and what to do with an intent whose launch failed."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from chalicelib.fleet.comput3 import Comput3Client, Comput3Error, Launch, LaunchAborted, LaunchFailed, Wait
from chalicelib.fleet.idle import TrafficLog
from chalicelib.fleet.reaper import Reaper
from chalicelib.fleet.registry import GpuRecord, GpuRegistry, RecordLost
from chalicelib.platform.logs import EventLogger

from ..node import Node
from .settings import GpuSettings
from .threads import in_background, safely, start_daemon

# settle(launch, error): what becomes of a launch whose caller stopped waiting for it.
LateLaunch = Callable[[Launch | None, Comput3Error | None], None]


class LaunchHandedOver(LaunchAborted):
    """The caller was cancelled while the launch call was in flight: the call goes on in its
    own thread and its answer (or failure) is settled by the ``late`` handler."""


class Launches:
    def __init__(self, settings: GpuSettings, client: Comput3Client, registry: GpuRegistry, reaper: Reaper,
                 clock: Callable[[], float], log: EventLogger, traffic: TrafficLog | None = None):
        self.settings = settings
        self.traffic = traffic  # learns each launch + boot time (GPU_IDLE_POLICY=adaptive)
        self.client = client
        self.registry = registry
        self.reaper = reaper
        self.clock = clock
        self.log = log
        # The nodes this worker has lately known (launched, reused, adopted, checked): whose
        # names and workload ids a job's error never shows (worker_runtime/tenant_errors.py).
        self.recent: deque[Node] = deque(maxlen=32)

    def choose_expires(self, records: list[GpuRecord]) -> int:
        """now + GPU_LIFETIME, made unique among records: ``expires`` is how an unrecorded
        launch is recognised in the workloads list."""
        taken = {r.expires for r in records}
        expires = int(self.clock()) + self.settings.lifetime
        while expires in taken:
            expires -= 1
        return expires

    def call(self, intent: GpuRecord, wait: Wait, late: LateLaunch) -> Launch:
        """Launch for ``intent``, returning as soon as ``wait`` says stop (a job's cancel)
        even while the HTTP call hangs: an HTTP call cannot be taken back, so it runs in a
        thread of its own and, once the caller has gone, its outcome goes to ``late``."""
        box: dict[str, object] = {}
        done = threading.Event()
        gate = threading.Lock()  # decides once: the caller takes the outcome, or ``late`` does

        def run() -> None:
            try:
                box["launch"] = self.client.launch(self.settings.workload_type, intent.expires, wait=wait)
            except Comput3Error as exc:
                box["error"] = exc
            except Exception as exc:  # noqa: BLE001 - an unexpected failure may still have launched
                box["error"] = LaunchFailed(f"POST /launch failed: {type(exc).__name__}: {exc}", True)
            with gate:
                done.set()
                handed_over = "late" in box
            if handed_over:
                outcome, error = box.get("launch"), box.get("error")
                safely(lambda: late(outcome, error), "late launch answer", self.log)  # type: ignore[arg-type]

        start_daemon(run, f"gpu-launch-{intent.id}")
        while not done.is_set():
            if wait(0.05):
                with gate:
                    if not done.is_set():
                        box["late"] = True
                        raise LaunchHandedOver("the job was cancelled while the launch call was in flight; "
                                               "its answer is settled when it comes", True)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["launch"]  # type: ignore[return-value]

    def node(self, record: GpuRecord) -> Node:
        assert record.workload and record.node
        node = Node(workload=record.workload, name=record.node, api_key=self.client.api_key,
                    urls=self.settings.node_urls)
        if node not in self.recent:
            self.recent.append(node)
        return node

    def await_boot(self, record: GpuRecord, wait: Wait) -> str | None:
        """Poll the new node's own health URL until it answers (no control-plane calls),
        for up to GPU_BOOT_TIMEOUT: the job starts within GPU_BOOT_POLL of the boot."""
        s = self.settings
        base = self.node(record).base_url
        deadline = time.monotonic() + s.boot_timeout
        while True:
            problem = self.client.node_health(base, s.health_timeout)
            if problem is None:
                if self.traffic is not None:  # intent to ready: what a relaunch costs
                    traffic, seconds = self.traffic, self.clock() - record.created_at
                    in_background(lambda: traffic.record_boot(seconds), "boot record", self.log)
                return None
            if time.monotonic() >= deadline:
                return f"{problem} (still not ready after GPU_BOOT_TIMEOUT={s.boot_timeout:g} s)"
            if wait(s.boot_poll):
                return None  # cancelled: the caller raises

    def abandon(self, intent: GpuRecord, maybe_launched: bool, why: str) -> None:
        if not maybe_launched:
            try:
                self.registry.delete(intent)
            except RecordLost:
                pass
            return
        # An attempt may have started an instance after all: find it by its expires.
        self.reaper.stop(intent, f"launch failed ({why}); stopping anything it started anyway")

    def sweep_duplicates(self, record: GpuRecord) -> None:
        try:
            self.reaper.sweep(record.expires, exclude_id=record.id, since=record.created_at)
        except Exception as exc:  # noqa: BLE001 - best effort; the launch itself succeeded
            self.log.warning("gpu.duplicate_check_failed", workload=record.workload, error=str(exc))
