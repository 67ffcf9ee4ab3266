"""Takes the next job message from the highest non-empty priority lane (chalicelib/jobs/lanes.py).

    1. a sweep: one short poll per lane, highest first; the first message is taken.
       (A busy system always finds work here: no wait is added per lane.)
    2. all lanes empty: a long poll on every lane at once, one poller thread per lane; the
       first message to arrive is taken (of several arrived together, the highest lane's).
       An idle worker so answers a job in any lane as fast as a single long poll would.

The pollers live as long as the receiver, one per lane, and poll only while a take is
waiting: a poll still in flight when the take got its message may receive one more; that
message is handed back at once (a fresh copy sent to the same lane, the received one
deleted), so it is visible to any other worker immediately and its receive count (which
dead-letters it at maxReceiveCount) does not grow. Should this process die before the copy
is sent, the message reappears after its visibility timeout, as any message of a dead worker."""

from __future__ import annotations

import threading
from typing import Any

from chalicelib.jobs.lanes import LANES, LaneQueues
from chalicelib.platform.queue import JobQueue, Message
from chalicelib.platform.retry import retry_transient

ERROR_PAUSE = 1.0  # a lane whose poll failed waits this long before polling again


class LaneReceiver:
    def __init__(self, lanes: LaneQueues, wait_seconds: int, visibility: int, log: Any):
        self.lanes = lanes
        self.wait_seconds = wait_seconds
        self.visibility = visibility
        self.log = log
        self._cond = threading.Condition()
        self._wanted = False  # a take is waiting for the pollers
        self._arrived: list[tuple[int, Message]] = []
        self._errors: dict[int, BaseException] = {}
        self._pollers: list[threading.Thread] = []

    def receive(self) -> list[Message]:
        """At most one message: the highest lane's that is there now, or the first to come
        within the long poll. Raises when every lane's poll failed (SQS unreachable)."""
        for _, queue in self.lanes.items():
            got = queue.receive(wait_seconds=0, visibility=self.visibility)
            if got:
                return got[:1]
        if self.wait_seconds <= 0:
            return []
        return self._first_to_arrive()

    def _first_to_arrive(self) -> list[Message]:
        self._start_pollers()
        arrived: list[tuple[int, Message]] = []
        try:
            with self._cond:
                self._arrived, self._errors, self._wanted = [], {}, True
                self._cond.notify_all()
                # A poll lasts wait_seconds; the pollers poll again while the take waits, so
                # this bound only returns control to the worker loop (health, GPU upkeep).
                self._cond.wait_for(lambda: self._arrived or len(self._errors) == len(LANES),
                                    timeout=self.wait_seconds + 1)
                self._wanted = False
                arrived, errors = sorted(self._arrived, key=lambda pair: pair[0]), dict(self._errors)
                self._arrived = []
        except BaseException:  # a shutdown signal: nothing is taken, what arrived goes back
            with self._cond:
                self._wanted = False
                arrived, self._arrived = list(self._arrived), []
            for _, message in arrived:
                self._hand_back(message)
            raise
        if not arrived:
            if len(errors) == len(LANES):
                raise next(iter(errors.values()))
            return []
        for _, message in arrived[1:]:
            self._hand_back(message)
        return [arrived[0][1]]

    def _start_pollers(self) -> None:
        if self._pollers:
            return
        for rank, (lane, queue) in enumerate(self.lanes.items()):
            thread = threading.Thread(target=self._poll_forever, args=(rank, queue), daemon=True,
                                      name=f"lane-poller-{lane}")
            thread.start()
            self._pollers.append(thread)

    def _poll_forever(self, rank: int, queue: JobQueue) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted)
            try:
                got = queue.receive(wait_seconds=self.wait_seconds, visibility=self.visibility)
            except Exception as exc:  # noqa: BLE001 - reported to the take; retried after a pause
                with self._cond:
                    self._errors[rank] = exc
                    self._cond.notify_all()
                threading.Event().wait(ERROR_PAUSE)
                continue
            with self._cond:
                taken = self._wanted
                if taken:
                    self._arrived.extend((rank, m) for m in got)
                    self._errors.pop(rank, None)
                    if got:
                        self._cond.notify_all()
            if not taken:
                for message in got:
                    self._hand_back(message)

    def _hand_back(self, message: Message) -> None:
        """A copy to the same lane, then the received message deleted."""
        queue = message.origin
        if queue is None:
            return
        try:
            retry_transient(queue.send_body, message.body, attempts=3, max_wait=1.0, what="hand_back_send")
            retry_transient(queue.delete, message.receipt, attempts=3, max_wait=1.0, what="hand_back_delete")
            self.log.info("message.handed_back", job_id=message.job_id(), queue=queue.name,
                          reason="a lane poll received it after another lane's message was taken")
        except Exception as exc:  # noqa: BLE001 - it reappears after its visibility timeout
            self.log.warning("message.hand_back_failed", job_id=message.job_id(), queue=queue.name,
                             reason=f"{type(exc).__name__}: {exc}; it reappears after its visibility timeout")
