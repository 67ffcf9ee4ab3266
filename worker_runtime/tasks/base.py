"""The interface between the worker and a task: job in, media file or text out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from chalicelib.jobs.record import Job
from chalicelib.platform.logs import EventLogger

from ..cancel import CancelToken


def _ignore_report(phase: str | None = None, progress: float | None = None) -> None:
    """A task run outside a worker reports nowhere."""


class TaskError(Exception):
    """A task failed. Its message is the job's error verbatim (a bad input names the field
    and the rule), unless ``public`` is given: then the message is the operators' (it
    names a GPU node, a table, ...; it goes to the log) and ``public`` is the tenant's."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public

    def for_tenant(self) -> str:
        """What the job's error says (worker_runtime/tenant_errors.py)."""
        return self.public or str(self)


class NodeFault(TaskError):
    """The GPU node failed the job: it stopped answering, or one of its apps failed in a
    way that points at the node (an error answer, a CUDA error, a missing model, a
    malformed result). The worker stops the instance; any other TaskError keeps it.

    The message is the operators' detail (the node's name, URL, its app's answer); the
    tenant reads ``for_tenant()``: the step (``during``), and ``cause`` when the node
    stopped answering, written without any address."""

    def __init__(self, detail: str, *, during: str | None = None, cause: str | None = None):
        super().__init__(detail)
        self.during = during  # "the CSM call"; GpuTask fills in its task's step when None
        self.cause = cause  # "connection refused", ... when the node stopped answering
        self.instance_stopped = False  # set by GpuTask once the instance is stopped

    def for_tenant(self) -> str:
        during = self.during or NodeTask.node_step
        text = (f"The GPU node stopped answering during {during} ({self.cause})" if self.cause
                else f"GPU node error during {during}")
        return text + ("; the instance was stopped" if self.instance_stopped else "")


@dataclass
class TaskResult:
    """Either a media file (``path`` with extension ``ext``) or ``text``."""

    path: Path | None = None
    ext: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.text is None):
            raise ValueError("a task result is either a file or text")


@dataclass
class TaskContext:
    job: Job
    request: Any  # the validated pydantic request model
    output_dir: Path
    cancel: CancelToken
    log: EventLogger
    node: Any = None  # the GPU node handle when the task needs one
    extras: dict[str, Any] = field(default_factory=dict)
    # report(phase=None, progress=None): where the job is (worker_runtime/phases.py); never blocks.
    report: Callable[..., None] = _ignore_report

    def path(self, suffix: str) -> Path:
        """Temp file named per the spec: ``{job_id}{suffix}`` in OUTPUT_DIR."""
        return self.output_dir / f"{self.job.id}{suffix}"


class Task(Protocol):
    needs_gpu: bool

    def run(self, ctx: TaskContext) -> TaskResult: ...


class NodeTask:
    """Base of the four GPU tasks: settings, the downloader, and the node they need.

    A task is two steps: ``prepare`` downloads, validates and converts every input
    without a node (a bad input fails here and costs no GPU), and ``render`` runs on
    ``ctx.node`` with what ``prepare`` returned. The worker asks for a node between the two."""

    needs_gpu = True
    label = "This task"
    node_step = "the job's work on the GPU node"  # named in a node fault's error (NodeFault.during)

    def __init__(self, settings: Any, downloader: Any):
        self.settings = settings
        self.downloader = downloader

    def run(self, ctx: TaskContext) -> TaskResult:
        """Both steps at once, on the node already in ``ctx.node``."""
        return self.render(ctx, self.prepare(ctx))

    def needs_prepare(self, request: Any) -> bool:
        """False when ``prepare`` has nothing to do for ``request`` (no input to fetch or
        convert): the worker then asks for the node at once, without a child process."""
        return True

    def prepare(self, ctx: TaskContext) -> Any:
        raise NotImplementedError

    def render(self, ctx: TaskContext, inputs: Any) -> TaskResult:
        raise NotImplementedError

    def require_node(self, ctx: TaskContext) -> Any:
        if ctx.node is None:
            raise TaskError(f"{self.label} needs a GPU node and none was assigned")
        return ctx.node
