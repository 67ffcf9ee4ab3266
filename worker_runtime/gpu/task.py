"""Runs a GPU task: its inputs first, then a node, acquired inside the supervised run.

``prepare`` (download, validate, convert) runs before any node is asked for, so a job
with a bad input fails without a launch and leaves a warm instance running. Getting a
node can take minutes (pre-launch delay, launch retries, init wait): doing it inside
the supervisor's task thread means the lease heartbeat, max_time, complete_by, client
cancel and shutdown all cover it, exactly as they cover the task itself.

Both steps run in a child process (``TaskProcess``) the worker kills when the task does
not stop after its cancel; the node stays bound to the job until the step has ended.
The instance is stopped only for a fault of the node (NodeFault, the monitor's failed
health check, a step that had to be killed or died mid-call); a bad input, a cancel or a
limit the node honoured keep it."""

from __future__ import annotations

from typing import Any

from ..cancel import CancelToken, TaskCancelled
from ..isolation import StepDied, StepKilled, TaskProcess
from ..stops import RULES, Gpu
from ..tasks.base import NodeFault, Task, TaskContext, TaskResult


class GpuTask:
    needs_gpu = True

    def __init__(self, task: Task, gpu: Any, process: TaskProcess | None = None):
        """``process``: where the steps run (killable, memory-capped); None runs them
        in the calling thread."""
        self.task = task
        self.gpu = gpu
        self.process = process
        self.killable = process is not None

    def run(self, ctx: TaskContext) -> TaskResult:
        prepare = getattr(self.task, "prepare", None)
        needed = getattr(self.task, "needs_prepare", lambda request: True)
        # Nothing to download or convert (inputs known good at parse): no child, straight to the node.
        inputs = self._step(ctx, prepare) if prepare is not None and needed(ctx.request) else None
        ctx.cancel.raise_if_cancelled()
        job_id = ctx.job.id
        node = self.gpu.acquire(job_id, ctx.cancel, ctx.log, on_phase=ctx.report, arrived_at=ctx.job.created_at)
        ctx.node = node
        ctx.report("rendering")
        try:
            self.gpu.watch(job_id, node, ctx.cancel)
            if prepare is not None:
                result = self._step(ctx, self.task.render, inputs)  # type: ignore[attr-defined]
            else:
                result = self._step(ctx, self.task.run)
        except (NodeFault, StepDied, StepKilled) as exc:
            if isinstance(exc, NodeFault) and exc.during is None:
                exc.during = getattr(self.task, "node_step", None)  # the step the tenant's error names
            # A step that was killed or died may have left its work running on the node.
            stopped = self.gpu.release(job_id, exc if isinstance(exc, NodeFault) else NodeFault(str(exc)))
            message = f"{exc}; the instance was stopped" if stopped else str(exc)
            if isinstance(exc, StepKilled):
                raise TaskCancelled(message) from None
            exc.args = (message,)  # the same fault (its type, its tenant text), saying what became of the node
            if isinstance(exc, NodeFault):
                exc.instance_stopped = stopped
            raise exc from None
        except BaseException:
            self.gpu.release(job_id, _cancel_fault(ctx.cancel), busy_for=ctx.extras.get("node_busy_for"))
            raise
        self.gpu.release(job_id, _cancel_fault(ctx.cancel))
        return result

    def _step(self, ctx: TaskContext, step: Any, *args: Any) -> Any:
        if self.process is None:
            return step(ctx, *args)
        return self.process.call(ctx, step, *args)


def _cancel_fault(token: CancelToken) -> NodeFault | None:
    """A stop whose rule stops the instance (worker_runtime/stops.py) counts as the node's fault."""
    if token.kind is not None and RULES[token.kind].gpu is Gpu.STOP:
        return NodeFault(token.reason or token.kind.value)
    return None
