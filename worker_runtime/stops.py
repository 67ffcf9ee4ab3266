"""Why a running job was stopped before its task returned, and what follows: ONE table.

The supervisor (or the GPU monitor) cancels the task's token with a ``Stop``; the worker
(``Worker.finish``) and the GPU task (``GpuTask``) read what to do from ``RULES``:

    stop          job record             message                      GPU instance
    client        nothing (client's)     acked                        kept
    lease_lost    nothing (new holder's) left (the holder has its own) kept
    shutdown      queued again           visible again at once        kept (shutdown stops it)
    max_time      failed: the reason     acked after the write        kept
    deadline      failed: the reason     acked after the write        kept
    node_failed   failed: the reason     acked after the write        stopped

Whatever the stop, a task step that has not ended TASK_WIND_DOWN seconds after its cancel
is killed, and then its instance is stopped (its work may still run on the node)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stop(str, Enum):
    CLIENT = "client"  # the client set a final status (cancelled, failed) meanwhile
    LEASE_LOST = "lease_lost"  # another worker holds the job now (or its record went away)
    SHUTDOWN = "shutdown"  # this worker is stopping and the grace period ran out
    MAX_TIME = "max_time"  # the job's max_time (capped by MAX_RENDER_TIME) passed
    DEADLINE = "deadline"  # the job's complete_by passed
    NODE_FAILED = "node_failed"  # the GPU node failed its health check mid-job


class Record(Enum):
    NOTHING = "nothing"  # the record already says what happened; it is not touched
    FAILED = "failed"  # failed, with the stop's reason as the job's error
    REQUEUE = "requeue"  # queued again (the attempt counted) for another worker


class Message(Enum):
    ACK = "ack"  # deleted (after the final write, when there is one)
    LEAVE = "leave"  # left to its visibility timeout
    RELEASE = "release"  # made visible again at once


class Gpu(Enum):
    KEEP = "keep"
    STOP = "stop"


@dataclass(frozen=True)
class Rule:
    record: Record
    message: Message
    gpu: Gpu
    event: str  # what the worker logs
    why: str


RULES: dict[Stop, Rule] = {
    Stop.CLIENT: Rule(Record.NOTHING, Message.ACK, Gpu.KEEP, "job.stopped_by_client",
                      "client changed the status; nothing written"),
    Stop.LEASE_LOST: Rule(Record.NOTHING, Message.LEAVE, Gpu.KEEP, "job.lease_lost",
                          "another worker owns the job now; result dropped"),
    Stop.SHUTDOWN: Rule(Record.REQUEUE, Message.RELEASE, Gpu.KEEP, "job.released",
                        "worker shutting down; job requeued for another worker"),
    Stop.MAX_TIME: Rule(Record.FAILED, Message.ACK, Gpu.KEEP, "job.max_time",
                        "out of time; the node stopped the work when asked"),
    Stop.DEADLINE: Rule(Record.FAILED, Message.ACK, Gpu.KEEP, "job.deadline",
                        "past complete_by; the node stopped the work when asked"),
    Stop.NODE_FAILED: Rule(Record.FAILED, Message.ACK, Gpu.STOP, "job.node_failed",
                           "the GPU node failed its health check; its instance is stopped"),
}
