"""Priority lanes: one SQS queue per priority, taken highest first.

    high    taken first
    normal  taken when high is empty (JOBS_QUEUE)
    low     taken when high and normal are empty; a low job queued LOW_PRIORITY_MAX_WAIT
            seconds is served as normal: at submit a copy of its message goes to the
            normal lane, delayed by that bound (SQS keeps it invisible until then), so
            the promotion is carried by SQS itself, not by a process that may die. The
            copy of a job already taken is dropped like any duplicate (claims are
            conditional). A job whose sends did not all go out stays owed a dispatch
            (the outbox); the reconciler sends it, with its promotion, to the lane it is
            in now.

A job's place in the take order (``take_key``) is what ``queue_position`` counts and
what the worker's receiver (worker_runtime/receiver.py) follows."""

from __future__ import annotations

from typing import Any, Iterable

from chalicelib.platform.queue import JobQueue

HIGH, NORMAL, LOW = "high", "normal", "low"
LANES = (HIGH, NORMAL, LOW)  # the take order
_RANK = {lane: rank for rank, lane in enumerate(LANES)}


def lane_now(priority: str | None, created_at: float, now: float, low_max_wait: float) -> str:
    """The lane a job's message is taken from now: its priority, or normal for a low job
    queued ``low_max_wait`` seconds."""
    lane = priority if priority in _RANK else NORMAL
    if lane == LOW and now >= created_at + low_max_wait:
        return NORMAL
    return lane


def take_key(priority: str | None, created_at: float, now: float, low_max_wait: float) -> tuple[int, float]:
    """(lane rank, place in the lane) of a queued job: lanes highest first, within a lane
    submission order. A promoted low job joined the normal lane when its delayed copy
    became visible, behind the normal jobs submitted before that."""
    lane = lane_now(priority, created_at, now, low_max_wait)
    if lane == NORMAL and priority == LOW:
        return _RANK[NORMAL], created_at + low_max_wait
    return _RANK[lane], created_at


class LaneQueues:
    """The job queues of the lanes, highest first; ``depth`` sums them (what the GPU pool's
    demand and the worker autoscaling read), ``depths`` gives each."""

    def __init__(self, queues: dict[str, JobQueue]):
        assert list(queues) == list(LANES), "one queue per lane, highest first"
        self.queues = queues

    def __getitem__(self, lane: str) -> JobQueue:
        return self.queues[lane]

    def items(self) -> Iterable[tuple[str, JobQueue]]:
        return self.queues.items()

    def depths(self) -> dict[str, dict[str, int]]:
        return {lane: queue.depth() for lane, queue in self.queues.items()}

    def depth(self) -> dict[str, int]:
        return total(self.depths().values())


def total(depths: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {"messages": 0, "in_flight": 0, "delayed": 0}
    for depth in depths:
        for k in out:
            out[k] += depth.get(k, 0)
    return out


def lane_of(item: dict[str, Any]) -> str:
    """The priority on a record or index item (records from before the lanes: normal)."""
    priority = item.get("priority")
    return priority if priority in _RANK else NORMAL
