"""The worker loop and the named steps it delegates to.

    run():  while not stopping: receive -> process(message)
    process(): parse -> load -> skip expired -> claim -> supervise the task ->
               write the outcome (conditional) -> notify (winner only) -> ack
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from chalicelib.context import Context
from chalicelib.job import Job
from chalicelib.logs import get_logger
from chalicelib.models import JobStatus, parse_job_request
from chalicelib.queue import Message
from chalicelib.results import content_type_for, result_key
from chalicelib.store import TransitionConflict

from .cancel import CancelToken
from .files import remove_job_files
from .gpu.task import GpuTask
from .lease import Lease, LeaseLost
from .notify import Notifier
from .settings import WorkerSettings
from .supervisor import Outcome, Supervisor
from .tasks.base import Task, TaskContext

EXPIRED_ERROR = "Job expired before processing could begin"


class Shutdown(BaseException):
    """Raised by the signal handler to interrupt an idle long poll."""


class Worker:
    def __init__(self, ctx: Context, settings: WorkerSettings, tasks: dict[Any, Task],
                 notifier: Notifier, gpu: Any = None, clock: Callable[[], float] = time.time):
        self.ctx = ctx
        self.settings = settings
        self.tasks = tasks
        self.notifier = notifier
        self.gpu = gpu
        self.clock = clock
        self.stopping = threading.Event()
        self.idle = threading.Event()  # set while blocked in an empty long poll
        self.output_dir = Path(settings.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(settings.heartbeat_interval, settings.max_render_time, clock)
        self.log = get_logger("c3.worker", worker=settings.worker_id)
        self.jobs_done = 0

    # -- the loop -----------------------------------------------------------
    def run(self, max_jobs: int | None = None) -> None:
        self.log.info("worker.started", lease=self.settings.lease_seconds,
                      polling_interval=self.settings.polling_interval)
        try:
            while not self.stopping.is_set():
                self.touch_health()
                if self.gpu is not None:
                    self.gpu.maintain()
                messages = self.receive()
                for message in messages:
                    self.process(message)
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
        except Shutdown:
            self.log.info("worker.interrupted", reason="signal during an idle long poll")
        finally:
            self.teardown()

    def receive(self) -> list[Message]:
        self.idle.set()
        try:
            return self.ctx.jobs_queue.receive(
                wait_seconds=self.settings.receive_wait_seconds,
                visibility=self.settings.lease_seconds,
            )
        except Exception:  # noqa: BLE001 - SQS unreachable: back off, keep the worker alive
            self.log.error("queue.receive_failed", exc_info=True, reason="retrying in 1 s")
            self.stopping.wait(1.0)
            return []
        finally:
            self.idle.clear()

    def request_stop(self) -> None:
        self.stopping.set()

    def teardown(self) -> None:
        left = self.notifier.drain(timeout=self.settings.shutdown_grace)
        if left:
            self.log.warning("worker.webhooks_abandoned", count=left,
                             reason="shutdown grace ran out while webhooks were still retrying")
        if self.gpu is not None:
            self.gpu.shutdown()
        self.log.info("worker.stopped", jobs=self.jobs_done)

    def touch_health(self) -> None:
        if self.settings.health_file:
            Path(self.settings.health_file).write_text(str(self.clock()))

    # -- one message ----------------------------------------------------------
    def process(self, message: Message) -> None:
        queue = self.ctx.jobs_queue
        job_id = message.job_id()
        if job_id is None:
            self.log.warning("message.malformed", body=message.body[:200],
                             reason="no job id in the body; deleted so it is not retried forever")
            queue.delete(message.receipt)
            return
        log = self.log.bind(job_id=job_id)
        job = self.ctx.store.get(job_id)
        if job is None:
            log.warning("message.unknown_job", reason="no record for this id; message deleted")
            queue.delete(message.receipt)
            return
        log = log.bind(type=job.type.value)
        lease = Lease(queue, self.ctx.store, message, job_id, self.settings.worker_id,
                      self.settings.lease_seconds)
        if job.status.is_terminal:
            log.info("message.duplicate_final", status=job.status.value,
                     reason="job already finished; duplicate delivery dropped")
            lease.ack()
            return
        if job.status is JobStatus.QUEUED and self.clock() >= job.complete_by:
            self.skip_expired(job, lease, log)
            return
        try:
            job = self.ctx.store.claim(job_id, self.settings.worker_id, self.settings.lease_seconds)
        except TransitionConflict as exc:
            self.handle_lost_claim(exc.current, lease, log)
            return
        log = log.bind(attempt=job.attempts)
        queue_wait = round(job.started_at - job.created_at, 3) if job.started_at else None
        log.info("job.claimed", queue_wait=queue_wait, receive_count=message.receive_count)
        if job.attempts > 1 and self.clock() >= job.complete_by:
            self.finish(job, Outcome(error="Job did not complete before its complete_by deadline"), lease, log)
            return
        try:
            self.perform(job, lease, log)
        finally:
            removed = remove_job_files(self.output_dir, job.id)
            log.debug("job.cleaned", files=removed)
            self.jobs_done += 1

    def skip_expired(self, job: Job, lease: Lease, log: Any) -> None:
        try:
            failed = self.ctx.store.transition(job.id, JobStatus.FAILED, from_states=[JobStatus.QUEUED],
                                               fields={"error": EXPIRED_ERROR})
        except TransitionConflict as exc:
            self.handle_lost_claim(exc.current, lease, log)
            return
        log.warning("job.expired", reason="complete_by passed before the job started")
        self.notifier.job_finished(failed)
        lease.ack()

    def handle_lost_claim(self, current: Job | None, lease: Lease, log: Any) -> None:
        if current is None or current.status.is_terminal:
            log.info("message.dropped", state=current.status.value if current else "missing",
                     reason="job finished or removed meanwhile")
            lease.ack()
            return
        # Another live worker holds the job. Keep the message (hidden for a lease)
        # as a safety net: if that worker dies, the job is taken over from it.
        # Look again just after that lease would lapse.
        remaining = (current.lease_expires or 0) - self.clock()
        delay = int(min(self.settings.lease_seconds, max(1, remaining + 1)))
        log.info("message.duplicate_running", holder=current.worker, retry_in=delay,
                 reason="another worker holds a live lease; no work done")
        lease.release_message(delay=delay)

    def perform(self, job: Job, lease: Lease, log: Any) -> None:
        task = self.tasks.get(job.type)
        request = parse_job_request(job.type, job.params)
        token = CancelToken()
        started = time.monotonic()
        try:
            if task is None:
                outcome = Outcome(error=f"No task implementation for job type {job.type.value}")
            else:
                if getattr(task, "needs_gpu", False) and self.gpu is not None:
                    # Acquires the node inside the supervised run (lease heartbeat, max_time,
                    # shutdown cover a launch too) and calls gpu.watch/unwatch/job_done.
                    task = GpuTask(task, self.gpu)
                ctx = TaskContext(job=job, request=request, output_dir=self.output_dir,
                                  cancel=token, log=log)
                outcome = self.supervisor.run(task, ctx, lease, self.stopping,
                                              self.settings.shutdown_grace, log, on_beat=self.touch_health)
        except Exception as exc:  # noqa: BLE001 - the job fails readably
            log.error("job.setup_failed", exc_info=True)
            outcome = Outcome(error=str(exc) or type(exc).__name__)
        log.info("job.ran", run_time=round(time.monotonic() - started, 3),
                 stopped=outcome.stop_kind, failed=outcome.error is not None)
        self.finish(job, outcome, lease, log)

    # -- writing the outcome ---------------------------------------------------
    def finish(self, job: Job, outcome: Outcome, lease: Lease, log: Any) -> None:
        if outcome.stop_kind == "client":
            log.info("job.stopped_by_client", reason="client changed the status; nothing written")
            lease.ack()
            return
        if outcome.stop_kind == "lease_lost":
            log.warning("job.lease_lost", reason="another worker owns the job now; result dropped")
            return
        if outcome.stop_kind == "shutdown":
            self.release(job, lease, log)
            return
        if outcome.error is not None:
            self.write_final(job, JobStatus.FAILED, {"error": outcome.error}, lease, log)
            return
        result = outcome.result
        assert result is not None
        fields: dict[str, Any] = {"error": None}
        key = None
        if result.path is not None:
            try:
                lease.renew()  # still ours? never upload over a new holder's result
                key = result_key(job.id, result.ext or result.path.suffix)
                ctype = content_type_for(result.ext or result.path.suffix)
                self.ctx.results.upload_file(str(result.path), key, ctype)
            except LeaseLost as exc:
                self.finish(job, Outcome(stop_kind="client" if exc.current and exc.current.status.is_terminal
                                         else "lease_lost"), lease, log)
                return
            except Exception as exc:  # noqa: BLE001
                log.error("result.upload_failed", exc_info=True)
                self.write_final(job, JobStatus.FAILED,
                                 {"error": f"Could not upload the result to S3: {exc}"}, lease, log)
                return
            fields.update(result_key=key, result_content_type=ctype)
        else:
            fields["result_text"] = result.text
        if not self.write_final(job, JobStatus.SUCCESS, fields, lease, log) and key is not None:
            current = self.ctx.store.get(job.id)
            if current is None or current.status is not JobStatus.SUCCESS:
                self.ctx.results.delete(key)

    def write_final(self, job: Job, status: JobStatus, fields: dict[str, Any], lease: Lease,
                    log: Any) -> bool:
        """Conditional terminal write; only the winner notifies. Returns True if won."""
        try:
            final = self.ctx.store.transition(job.id, status, from_states=[JobStatus.RUNNING],
                                              worker=self.settings.worker_id, fields=fields)
        except TransitionConflict as exc:
            state = exc.current.status.value if exc.current else "missing"
            log.info("job.final_write_lost", wanted=status.value, state=state,
                     reason="the record changed first (client status or takeover); not overwritten")
            if exc.current is None or exc.current.status.is_terminal:
                lease.ack()
            return False
        log.info("job.finished", status=status.value, error=final.error,
                 total_time=round(final.finished_at - final.created_at, 3) if final.finished_at else None)
        self.notifier.job_finished(final)
        lease.ack()
        return True

    def release(self, job: Job, lease: Lease, log: Any) -> None:
        """Shutdown: hand the job back (queued, attempt already counted) and make the
        message visible at once so another worker takes it."""
        try:
            self.ctx.store.transition(job.id, JobStatus.QUEUED, from_states=[JobStatus.RUNNING],
                                      worker=self.settings.worker_id,
                                      fields={"worker": None, "lease_expires": None})
        except TransitionConflict:
            log.info("job.release_skipped", reason="the record moved on meanwhile")
            return
        lease.release_message(0)
        log.info("job.released", reason="worker shutting down; job requeued for another worker")
