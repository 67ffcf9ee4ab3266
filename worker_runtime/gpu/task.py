"""Runs a GPU task: its inputs first, then a node, acquired inside the supervised run.

``prepare`` (download, validate, convert) runs before any node is asked for, so a job
with a bad input fails without a launch and leaves a warm instance running. Getting a
node can take minutes (pre-launch delay, launch retries, init wait): doing it inside
the supervisor's task thread means the lease heartbeat, max_time, complete_by, client
cancel and shutdown all cover it, exactly as they cover the task itself.

The instance is stopped only for a fault of the node (NodeFault, or the monitor's
failed health check); a bad input, a cancel or a limit the node honoured keep it."""

from __future__ import annotations

from typing import Any

from ..cancel import CancelToken
from ..tasks.base import NodeFault, Task, TaskContext, TaskResult

# The cancel kind the health monitor uses; the monitor has stopped the instance already.
NODE_FAILED = "node_failed"


class GpuTask:
    needs_gpu = True

    def __init__(self, task: Task, gpu: Any):
        self.task = task
        self.gpu = gpu

    def run(self, ctx: TaskContext) -> TaskResult:
        prepare = getattr(self.task, "prepare", None)
        inputs = prepare(ctx) if prepare is not None else None
        ctx.cancel.raise_if_cancelled()
        job_id = ctx.job.id
        node = self.gpu.acquire(job_id, ctx.cancel, ctx.log)
        ctx.node = node
        self.gpu.watch(job_id, node, ctx.cancel)
        try:
            result = self.task.render(ctx, inputs) if prepare is not None else self.task.run(ctx)
        except NodeFault as exc:
            stopped = self.gpu.release(job_id, exc)
            raise NodeFault(f"{exc}; the instance was stopped" if stopped else str(exc)) from None
        except BaseException:
            self.gpu.release(job_id, _cancel_fault(ctx.cancel))
            raise
        self.gpu.release(job_id, _cancel_fault(ctx.cancel))
        return result


def _cancel_fault(token: CancelToken) -> NodeFault | None:
    if token.cancelled and token.kind == NODE_FAILED:
        return NodeFault(token.reason or "the node failed its health check")
    return None
