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
    """A task failed for a reason the job's error should carry verbatim."""


class NodeFault(TaskError):
    """The GPU node failed the job: it stopped answering, or one of its apps failed in a
    way that points at the node (an error answer, a CUDA error, a missing model, a
    malformed result). The worker stops the instance; any other TaskError keeps it."""


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
