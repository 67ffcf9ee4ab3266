"""Runs a GPU task on a node that is acquired inside the supervised run.

Getting a node can take minutes (pre-launch delay, launch retries, init wait): doing it
inside the supervisor's task thread means the lease heartbeat, max_time, complete_by,
client cancel and shutdown all cover it, exactly as they cover the task itself."""

from __future__ import annotations

from typing import Any

from ..cancel import TaskCancelled
from ..tasks.base import Task, TaskContext, TaskResult

# Stops that are no failure of the job on the node: the client's own cancel, the job
# moving to another worker, and shutdown (GpuManager.shutdown() stops the instance next).
# Anything else that ends the run early (max_time, complete_by, monitor) counts as failed.
KEEP_AFTER = ("client", "lease_lost", "shutdown")


class GpuTask:
    needs_gpu = True

    def __init__(self, task: Task, gpu: Any):
        self.task = task
        self.gpu = gpu

    def run(self, ctx: TaskContext) -> TaskResult:
        node = self.gpu.acquire(ctx.cancel, ctx.log)
        ctx.node = node
        failed = True
        self.gpu.watch(node, ctx.cancel)
        try:
            result = self.task.run(ctx)
            failed = ctx.cancel.cancelled and ctx.cancel.kind not in KEEP_AFTER
            return result
        except TaskCancelled:
            failed = ctx.cancel.kind not in KEEP_AFTER
            raise
        finally:
            # Called by the task's own thread, so an instance stays busy for as long as
            # a task that ignores its cancel token keeps using it.
            self.gpu.job_done(node, failed=failed)
