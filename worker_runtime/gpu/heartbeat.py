"""The heartbeat thread: only short registry writes, so no stop, launch or health check of
this worker can make its records look abandoned (the reaper reclaims silent records)."""

from __future__ import annotations

import threading
from typing import Callable

from chalicelib.fleet.registry import RecordLost
from chalicelib.platform.logs import EventLogger

from .holdings import Holdings
from .threads import safely


class Heartbeat:
    def __init__(self, held: Holdings, interval: float, clock: Callable[[], float], closed: threading.Event,
                 log: EventLogger):
        self.held = held
        self.interval = interval
        self.clock = clock
        self.closed = closed
        self.log = log

    def run(self) -> None:
        while not self.closed.wait(self.interval):
            safely(self.beat, "heartbeat", self.log)

    def beat(self) -> None:
        held = self.held
        with held.lock:
            if held.current is not None:
                held.write_current(heartbeat=self.clock())
            for job_id, intent in list(held.intents.items()):
                try:
                    held.intents[job_id] = held.registry.update(intent, heartbeat=self.clock())
                except RecordLost as exc:
                    del held.intents[job_id]
                    self.log.error("gpu.intent_lost", job_id=job_id,
                                   reason=f"{exc}: another worker is reconciling it")
            for records in (held.ahead, held.draining):
                for record_id, record in list(records.items()):
                    try:
                        records[record_id] = held.registry.update(record, heartbeat=self.clock())
                    except RecordLost as exc:
                        del records[record_id]
                        self.log.error("gpu.intent_lost", reason=f"{exc}: another worker is reconciling it")
