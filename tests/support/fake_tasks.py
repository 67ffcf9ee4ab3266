"""Task implementations for worker tests (the GPU tasks arrive with their own issue).

A csm job's ``text`` is a tiny script: ``sleep:S`` (cancellable), ``hang:S``
(ignores its cancel token), ``fail:message``, ``nodefail:message`` (a fault of the GPU
node), ``crash``; anything else finishes at
once. Every run appends ``job_id pid event`` to $FAKE_TASK_LOG, so tests can count
runs across worker processes."""

from __future__ import annotations

import multiprocessing
import os
import time

from worker_runtime.tasks.base import NodeFault, TaskContext, TaskError, TaskResult


def worker_pid() -> int:
    """The worker's pid, also from a task step running in the worker's child process."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


def record(job_id: str, event: str) -> None:
    path = os.environ.get("FAKE_TASK_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{job_id} {worker_pid()} {event}\n")


class ScriptTask:
    needs_gpu = False

    def run(self, ctx: TaskContext) -> TaskResult:
        script = getattr(ctx.request, "text", None) or ""
        record(ctx.job.id, "start")
        command, _, arg = script.partition(":")
        if command == "sleep":
            if ctx.cancel.wait(float(arg)):
                record(ctx.job.id, "cancelled")
                ctx.cancel.raise_if_cancelled()
        elif command == "hang":
            time.sleep(float(arg))
        elif command == "fail":
            raise TaskError(arg)
        elif command == "nodefail":
            raise NodeFault(arg)
        elif command == "crash":
            raise RuntimeError("boom")
        out = ctx.path(".mp3")
        out.write_bytes(b"FAKE-MP3 " + ctx.job.id.encode())
        record(ctx.job.id, "done")
        return TaskResult(path=out, ext="mp3")


class TextTask:
    needs_gpu = False

    def run(self, ctx: TaskContext) -> TaskResult:
        record(ctx.job.id, "start")
        ctx.path("_input.mp3").write_bytes(b"input")  # a temp file the worker must remove
        return TaskResult(text=f"transcript of {ctx.request.audio_url}")


def fake_tasks(**_: object) -> dict[str, object]:
    return {"csm": ScriptTask(), "whisper": TextTask()}


def loaded_modules(ctx: TaskContext) -> list[str]:
    """A task step that reports which modules its child process had imported."""
    import sys

    return sorted(sys.modules)
