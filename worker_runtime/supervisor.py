"""Runs one task beside its watchers: lease heartbeat, client cancel, max_time,
complete_by and shutdown. The task knows nothing about any of them; it only sees
its cancel token.

The task runs in its own thread so that a task that ignores its token still
cannot hold the job past a limit: the supervisor returns within one check
interval plus the wind-down and the worker writes the outcome. A GPU task's steps
run in a child process that is killed at the wind-down (worker_runtime/isolation.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from chalicelib.jobs.models import JobStatus
from chalicelib.platform.logs import EventLogger

from .cancel import CancelToken, TaskCancelled
from .lease import Lease, LeaseLost
from .stops import RULES, Record, Stop
from .tasks.base import Task, TaskContext, TaskError, TaskResult

# How long a cancelled task gets to wind down (remote cancel calls) before the
# worker moves on without it; a killable task (one that runs in a child process,
# killed at the wind-down) gets this much more to report that it is gone.
WIND_DOWN_SECONDS = 5.0
KILL_SLACK_SECONDS = 10.0


@dataclass
class Outcome:
    result: TaskResult | None = None
    error: str | None = None  # why the job failed, in full (the operators' log)
    # The tenant's text for ``error``, which leaves out what tenants never see (a GPU node's
    # name, URL or workload id); None: ``error`` itself. Worker.finish decides what is written.
    public: str | None = None
    stop: Stop | None = None  # set when the task was stopped: see worker_runtime/stops.py


class Supervisor:
    def __init__(self, heartbeat_interval: float, max_render_time: int,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, wind_down: float = WIND_DOWN_SECONDS):
        self.heartbeat_interval = heartbeat_interval
        self.wind_down = wind_down
        self.max_render_time = max_render_time
        self.clock = clock
        self.monotonic = monotonic

    def run(self, task: Task, ctx: TaskContext, lease: Lease, stopping: threading.Event,
            shutdown_grace: float, log: EventLogger, on_beat: Callable[[], None] | None = None) -> Outcome:
        """``on_beat`` runs at every heartbeat (the worker's liveness signal)."""
        token = ctx.cancel
        box: dict[str, Outcome] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["outcome"] = Outcome(result=task.run(ctx))
            except TaskCancelled as exc:
                # Not cancelled by the token (a remote job cancelled by someone else): a failure.
                # Its message may add to the token's reason (e.g. that it had to be killed).
                box["outcome"] = (Outcome(stop=token.kind, error=str(exc)) if token.kind
                                  else Outcome(error=f"Task stopped: {exc}"))
            except TaskError as exc:
                box["outcome"] = Outcome(error=str(exc), public=exc.for_tenant())
            except Exception as exc:  # noqa: BLE001 - any task crash fails the job, readably
                log.error("task.crashed", exc_info=True)
                box["outcome"] = Outcome(error=f"Task failed: {type(exc).__name__}: {exc}")
            finally:
                done.set()

        thread = threading.Thread(target=target, name=f"task-{ctx.job.id[:8]}", daemon=True)
        limit = min(ctx.job.max_time, self.max_render_time)
        run_deadline = self.monotonic() + limit
        shutdown_deadline: float | None = None
        next_beat = self.monotonic() + self.heartbeat_interval
        thread.start()
        while not done.is_set():
            now = self.monotonic()
            if now >= next_beat:
                self._heartbeat(lease, token, log)
                if on_beat is not None:
                    on_beat()
                next_beat = now + self.heartbeat_interval
            if now >= run_deadline:
                token.cancel(f"Job exceeded max_time of {limit} seconds", Stop.MAX_TIME)
            elif self.clock() >= ctx.job.complete_by:
                token.cancel("Job did not complete before its complete_by deadline", Stop.DEADLINE)
            if stopping.is_set() and shutdown_deadline is None:
                shutdown_deadline = now + shutdown_grace
                log.info("job.shutdown_grace", grace=shutdown_grace,
                         reason="worker is stopping; the job gets the grace period to finish")
            if shutdown_deadline is not None and now >= shutdown_deadline:
                token.cancel("worker shut down before the job finished", Stop.SHUTDOWN)
            if token.cancelled:
                break
            wake = min(next_beat, run_deadline, now + max(0.0, ctx.job.complete_by - self.clock()))
            if shutdown_deadline is not None:
                wake = min(wake, shutdown_deadline)
            done.wait(max(0.01, wake - self.monotonic()))
        # A killable task ends by itself (its child is killed at the wind-down), so its
        # node is released before the supervisor returns; another is abandoned.
        wind_down = self.wind_down + (KILL_SLACK_SECONDS if getattr(task, "killable", False) else 0)
        if token.cancelled and not done.wait(wind_down):
            log.warning("task.abandoned", reason="task did not stop within the wind-down time")
        if token.cancelled:
            # A token cancelled while the task was finishing still decides: the
            # limit or the client's status wins over a late result.
            assert token.kind is not None
            reason = token.reason or token.kind.value
            late = box.get("outcome") if done.is_set() else None
            if late is not None and late.stop is token.kind and (late.error or "").startswith(reason):
                reason = late.error or reason
            failed = RULES[token.kind].record is Record.FAILED
            return Outcome(error=reason if failed else None, stop=token.kind,
                           public=token.public if failed else None)
        return box["outcome"]

    def _heartbeat(self, lease: Lease, token: CancelToken, log: EventLogger) -> None:
        try:
            lease.renew()
        except LeaseLost as exc:
            current = exc.current
            if current is not None and current.status.is_terminal:
                token.cancel(f"job was marked {current.status.value} while running", Stop.CLIENT)
            elif current is not None and current.status is JobStatus.RUNNING:
                token.cancel(f"lease taken over by worker {current.worker}", Stop.LEASE_LOST)
            else:
                token.cancel("job record disappeared or was requeued", Stop.LEASE_LOST)
        except Exception:  # noqa: BLE001 - a transient AWS error: retry at the next beat
            log.warning("lease.renew_failed", exc_info=True,
                        reason="could not renew the lease; retrying at the next heartbeat")
