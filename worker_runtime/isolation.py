"""Task steps in a child process the worker can kill, as rq's work horse.

    TaskProcess(memory_limit_mb, wind_down).call(ctx, step, *args) -> step(child_ctx, *args)

The step runs in a process forked from a forkserver (clean: none of the worker's threads,
locks or sockets), under RLIMIT_AS (TASK_MEMORY_LIMIT_MB), so a decompression bomb or a
runaway conversion fails its job instead of the worker. The child gets its own cancel
token, fed from the worker's through the pipe: the step's own cancel callbacks (Gradio
job cancel, ComfyUI interrupt, closing the Ollama stream) run in the child. A child that
has not ended ``wind_down`` seconds after the cancel is killed (SIGKILL): no step outlives
the job that ran it. The result, or the error, comes back through the same pipe.
A child whose worker dies (the pipe closes) cancels itself and exits after the wind-down.

    worker thread                          child process
    call(ctx, step) --(step, args, ctx)--> step(ctx, *args)
    token cancelled --("cancel", ...)----> token.cancel(...) -> remote cancel calls
    ctx.report(...) <--("report", phase, progress)   ctx.report(phase, progress) (any number)
                    <--("ok", value) / ("error", exc) / ("cancelled", reason)
    no reply by cancel + wind_down: SIGKILL -> StepKilled
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from chalicelib.jobs.record import Job
from chalicelib.platform.logs import EventLogger, configure

from .cancel import CancelToken, TaskCancelled
from .stops import Stop
from .tasks.base import TaskContext, TaskError

M_ARENA_MAX = -8  # glibc mallopt: fewer malloc arenas, so threads do not reserve 64 MiB each
POLL = 0.05
# Modules every child needs, imported once in the forkserver instead of in each child.
PRELOAD = ["worker_runtime.isolation", "worker_runtime.media", "worker_runtime.downloads"]

_context_lock = threading.Lock()
_context: Any = None


def _mp(preload: list[str] | None = None) -> Any:
    global _context
    with _context_lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD + [m for m in preload or [] if m not in PRELOAD])
        return _context


def warm_up(modules: list[str]) -> None:
    """Start the forkserver now, with ``modules`` (the task implementations: their steps
    are what the children unpickle) imported in it once, and wait until it forks: a job's
    child then costs a fork (~10-50 ms here), not a fork plus the imports of gradio_client
    and the rest (0.5-1 s here), and the first job does not pay the forkserver's start.
    Called once, before the worker takes its first message."""
    mp = _mp(modules)
    child = mp.Process(target=_ready, name="task-warm-up", daemon=True)
    child.start()  # returns once the forkserver runs; the join waits for its imports too
    child.join(120)


def _ready() -> None:
    """The warm-up child: it exists once the forkserver has imported its modules."""


class StepKilled(TaskCancelled):
    """The step did not stop within the wind-down after its cancel and was killed."""


class StepDied(TaskError):
    """The child process ended without a reply (a crash, or the kernel's OOM killer)."""


@dataclass(frozen=True)
class _ChildContext:
    """What the child needs to rebuild the TaskContext (the token is its own)."""

    job: Job
    request: Any
    output_dir: Path
    log: EventLogger
    node: Any

    def build(self, token: CancelToken, report: Callable[..., None]) -> TaskContext:
        return TaskContext(job=self.job, request=self.request, output_dir=self.output_dir, cancel=token,
                           log=self.log, node=self.node, report=report)


class TaskProcess:
    def __init__(self, memory_limit_mb: int | None, wind_down: float):
        self.memory_limit_mb = memory_limit_mb or None
        self.wind_down = wind_down

    def call(self, ctx: TaskContext, step: Callable[..., Any], *args: Any) -> Any:
        mp = _mp()
        parent, child = mp.Pipe()
        spec = _ChildContext(ctx.job, ctx.request, ctx.output_dir, ctx.log, ctx.node)
        proc = mp.Process(target=_child_main, name=f"task-{ctx.job.id[:8]}", daemon=True,
                          args=(child, step, args, spec, self.memory_limit_mb, self.wind_down,
                                logging.getLogger().level, dict(os.environ)))
        proc.start()
        child.close()
        ctx.log.debug("task.process_started", pid=proc.pid, step=getattr(step, "__name__", str(step)))
        token = ctx.cancel
        token.on_cancel(lambda: _send(parent, ("cancel", token.reason, token.kind)))
        try:
            reply = self._await(proc, parent, token, ctx)
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            parent.close()
        kind, value, *extra = reply
        if kind == "ok":
            return value
        if kind == "cancelled":
            if extra and extra[0] is not None:  # work the step left running on the node
                ctx.extras["node_busy_for"] = extra[0]
            raise TaskCancelled(value)
        raise value

    def _await(self, proc: Any, conn: Connection, token: CancelToken, ctx: TaskContext) -> tuple[str, Any]:
        kill_at: float | None = None
        while True:
            if conn.poll(POLL):
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    break
                if reply[0] != "report":
                    return reply
                ctx.report(*reply[1:])  # the worker's reporter: never blocks
                continue
            if not proc.is_alive() and not conn.poll(0):
                break
            if token.cancelled:
                now = time.monotonic()
                kill_at = kill_at or now + self.wind_down
                if now >= kill_at:
                    proc.kill()
                    proc.join(5)
                    ctx.log.warning("task.killed", pid=proc.pid, reason=f"did not stop within {self.wind_down:g} s "
                                                                         f"of its cancel ({token.reason})")
                    raise StepKilled(f"{token.reason or 'cancelled'}; the task did not stop within "
                                     f"{self.wind_down:g} s and was killed")
        proc.join(5)
        raise StepDied(f"The task's process died without an answer ({self._exit_reason(proc.exitcode)})")

    def _exit_reason(self, code: int | None) -> str:
        if code is None or code >= 0:
            return f"exit code {code}"
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL and self.memory_limit_mb:
            return f"{name}: killed from outside, possibly out of memory (TASK_MEMORY_LIMIT_MB={self.memory_limit_mb})"
        return name


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass  # the child has ended: nothing left to cancel


# -- in the child ---------------------------------------------------------------------

def _child_main(conn: Connection, step: Callable[..., Any], args: tuple[Any, ...], spec: _ChildContext,
                memory_limit_mb: int | None, wind_down: float, log_level: int, environ: dict[str, str]) -> None:
    # The worker alone decides when a step ends (through the pipe): a Ctrl-C or a SIGTERM
    # sent to the whole process group must not fail the job ahead of the worker's shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The worker's environment as it is now (the forkserver's is from when it started).
    os.environ.clear()
    os.environ.update(environ)
    configure(logging.getLevelName(log_level))
    _limit_memory(memory_limit_mb)
    token = CancelToken()
    finished = threading.Event()
    sending = threading.Lock()  # the step's threads report while the main thread may reply

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            conn.send(message)

    def report(phase: str | None = None, progress: float | None = None) -> None:
        if not finished.is_set():
            with sending:
                _send(conn, ("report", phase, progress))

    threading.Thread(target=_listen, args=(conn, token, finished, wind_down), daemon=True,
                     name="cancel-listener").start()
    log = spec.log
    ctx = spec.build(token, report)
    try:
        reply: tuple[Any, ...] = ("ok", step(ctx, *args))
    except TaskCancelled as exc:
        reply = ("cancelled", str(exc), ctx.extras.get("node_busy_for"))
    except TaskError as exc:
        reply = ("error", exc)
    except MemoryError:
        reply = ("error", TaskError(f"The task ran out of memory (TASK_MEMORY_LIMIT_MB={memory_limit_mb})"))
    except Exception as exc:  # noqa: BLE001 - any task crash fails the job, readably
        log.error("task.crashed", exc_info=True)
        reply = ("error", TaskError(f"Task failed: {type(exc).__name__}: {exc}"))
    finished.set()
    try:
        send(reply)
    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not pickle
        send(("error", TaskError(f"Task failed: its result could not be sent back: {exc}")))
    conn.close()


def _listen(conn: Connection, token: CancelToken, finished: threading.Event, wind_down: float) -> None:
    try:
        while True:
            kind, *rest = conn.recv()
            if kind == "cancel":
                token.cancel(*rest)
    except (EOFError, OSError):
        if finished.is_set():
            return
    # The worker is gone: stop the remote work, then leave.
    timer = threading.Timer(wind_down, os._exit, args=(1,))
    timer.daemon = True
    timer.start()
    token.cancel("the worker process went away", Stop.SHUTDOWN)


def _limit_memory(limit_mb: int | None) -> None:
    if not limit_mb:
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = limit_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
