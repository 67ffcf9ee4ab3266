"""The worker loop and the named steps it delegates to.

    run():  while not stopping: receive -> process(message)
    process(): parse -> load -> skip expired -> claim -> supervise the task ->
               write the outcome (conditional) -> queue the delivery (winner only) -> ack

Nothing here is the only copy of an effect: the terminal write puts the job in the
outbox (chalicelib/jobs/outbox.py), so a worker that dies after it still has its webhook
delivered; a message this worker fails to handle (an AWS error that outlasted the
retries) is left to reappear, and the worker carries on with the next one.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from chalicelib.context import Context
from chalicelib.jobs.models import JobStatus, parse_job_request
from chalicelib.jobs.record import Job
from chalicelib.jobs.results import content_type_for, result_key
from chalicelib.jobs.store import NOTIFY, TransitionConflict
from chalicelib.platform.logs import get_logger
from chalicelib.platform.queue import Message
from chalicelib.platform.retry import retry_transient

from .cancel import CancelToken
from .files import remove_job_files
from .gpu.task import GpuTask
from .isolation import TaskProcess
from .lease import Lease, LeaseLost
from .phases import PhaseReporter
from .receiver import LaneReceiver
from .settings import WorkerSettings
from .stops import RULES
from .stops import Message as MessageFate
from .stops import Record, Stop
from .supervisor import Outcome, Supervisor
from .tasks.base import Task, TaskContext
from .tenant_errors import node_addresses, tenant_error

EXPIRED_ERROR = "Job expired before processing could begin"
ATTEMPTS_ERROR = ("Job was started {attempts} times and never finished (its worker died or lost "
                  "it each time); giving up after MAX_ATTEMPTS={limit}")


class Shutdown(BaseException):
    """Raised by the signal handler to interrupt an idle long poll."""


class Worker:
    def __init__(self, ctx: Context, settings: WorkerSettings, tasks: dict[Any, Task],
                 gpu: Any = None, clock: Callable[[], float] = time.time, delivery: Any = None):
        """``delivery``: a DirectDelivery (worker_runtime/direct_delivery.py) to deliver the
        final webhooks of the jobs this worker finishes itself; None leaves them to the queue."""
        self.ctx = ctx
        self.delivery = delivery
        self.settings = settings
        self.tasks = tasks
        self.outbox = ctx.outbox
        self.gpu = gpu
        self.clock = clock
        self.stopping = threading.Event()
        self.idle = threading.Event()  # set while blocked in an empty long poll
        self.output_dir = Path(settings.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(settings.heartbeat_interval, settings.max_render_time, clock,
                                     wind_down=settings.task_wind_down)
        self.log = get_logger("c3.worker", worker=settings.worker_id)
        self.receiver = LaneReceiver(ctx.lanes, settings.receive_wait_seconds, settings.lease_seconds, self.log)
        self.jobs_done = 0
        self.health_file_failing = False  # logged once per failing spell
        self.current_job: str | None = None  # shown with the worker's beacon (the operators' page)
        # Each attempt's GPU use (the GPU manager's charges at release) goes on the job's cost:
        # with its final write when this worker makes it, else by itself (charge_job).
        self._uses: dict[str, list[dict[str, Any]]] = {}
        self._active: set[str] = set()
        self._uses_lock = threading.Lock()
        if gpu is not None and hasattr(gpu, "on_charged"):
            gpu.on_charged = self.charge_job

    # -- the loop -----------------------------------------------------------
    def run(self, max_jobs: int | None = None) -> None:
        self.log.info("worker.started", lease=self.settings.lease_seconds,
                      polling_interval=self.settings.polling_interval)
        try:
            while not self.stopping.is_set():
                self.touch_health()
                self.guarded("gpu.maintain_failed", self.gpu.maintain if self.gpu is not None else None)
                messages = self.receive()
                for message in messages:
                    self.guarded("message.process_failed", self.process, message)
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
        except Shutdown:
            self.log.info("worker.interrupted", reason="signal during an idle long poll")
        finally:
            self.teardown()

    def receive(self) -> list[Message]:
        self.idle.set()
        try:
            return self.receiver.receive()  # the highest non-empty lane's message
        except Exception:  # noqa: BLE001 - SQS unreachable: back off, keep the worker alive
            self.log.error("queue.receive_failed", exc_info=True, reason="retrying in 1 s")
            self.stopping.wait(1.0)
            return []
        finally:
            self.idle.clear()

    def guarded(self, event: str, step: Callable[..., Any] | None, *args: Any) -> None:
        """Run one step of the loop; an error it lets out (an AWS outage that outlasted
        the retries) is logged and the loop goes on. A message it was handling is not
        acked, so it reappears after its visibility timeout."""
        if step is None:
            return
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - only shutdown or bad configuration end a worker
            self.log.error(event, exc_info=True,
                           reason="step failed after retries; the message (if any) reappears later")
            self.stopping.wait(1.0)

    def request_stop(self) -> None:
        self.stopping.set()

    def teardown(self) -> None:
        try:
            self.ctx.beacons.gone(self.settings.worker_id)
        except Exception:  # noqa: BLE001 - the beacon expires by itself
            self.log.warning("worker.beacon_not_removed", reason="it ages out of /health's count")
        if self.gpu is not None:
            self.gpu.shutdown()
        if self.delivery is not None:
            self.delivery.close()
        self.log.info("worker.stopped", jobs=self.jobs_done)

    def touch_health(self) -> None:
        """The liveness signals: the health file (the container platform's check) and the
        worker's beacon in DynamoDB (what /health counts; written every 15 s at most)."""
        if self.settings.health_file:
            # Written aside and renamed over: a reader never sees the file empty mid-write.
            path = Path(self.settings.health_file)
            fresh = path.with_name(f".{path.name}.{threading.get_ident()}")
            try:
                fresh.write_text(str(self.clock()))
                os.replace(fresh, path)
            except OSError as exc:  # a full or read-only disk: the platform's check says so, not a job
                if not self.health_file_failing:
                    self.log.error("worker.health_file_failed", path=str(path), error=str(exc),
                                   reason="the container's health check will see a stale file; jobs go on")
                self.health_file_failing = True
            else:
                self.health_file_failing = False
        try:
            self.ctx.beacons.beat(self.settings.worker_id, job=self.current_job)
        except Exception as exc:  # noqa: BLE001 - a missed beacon only makes /health undercount
            self.log.warning("worker.beacon_failed", reason=f"{type(exc).__name__}: {exc}")

    def aws(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An AWS step a job cannot afford to lose, retried through transient errors."""
        return retry_transient(fn, *args, what=what, **kwargs)

    # -- one message ----------------------------------------------------------
    def process(self, message: Message) -> None:
        queue = message.origin or self.ctx.jobs_queue  # the lane it came from
        job_id = message.job_id()
        if job_id is None:
            self.log.warning("message.malformed", body=message.body[:200],
                             reason="no job id in the body; deleted so it is not retried forever")
            self.aws("ack", queue.delete, message.receipt)
            return
        log = self.log.bind(job_id=job_id)
        job = self.aws("get_job", self.ctx.store.get, job_id)
        if job is None:
            log.warning("message.unknown_job", reason="no record for this id; message deleted")
            self.aws("ack", queue.delete, message.receipt)
            return
        log = log.bind(type=job.type.value)
        lease = Lease(queue, self.ctx.store, message, job_id, self.settings.worker_id,
                      self.settings.lease_seconds)
        if job.status.is_terminal:
            log.info("message.duplicate_final", status=job.status.value,
                     reason="job already finished; duplicate delivery dropped")
            self.settle_final(job, lease)
            return
        if job.status is JobStatus.QUEUED and self.clock() >= job.complete_by:
            self.skip_expired(job, lease, log)
            return
        takeover = job.status is JobStatus.RUNNING  # a claim of a running job: its lease had lapsed
        try:
            job = self.aws("claim", self.ctx.store.claim, job_id, self.settings.worker_id,
                           self.settings.lease_seconds, job.wants_webhook("start"))
        except TransitionConflict as exc:
            current = exc.current
            if not (current and current.status is JobStatus.RUNNING
                    and current.worker == self.settings.worker_id):
                self.handle_lost_claim(current, lease, log)
                return
            job = current  # a retried claim whose first try had landed
        log = log.bind(attempt=job.attempts)
        if job.start_webhook == "pending":
            self.outbox.try_send(NOTIFY, job)  # lost, it is still delivered before the final one
        queue_wait = round(job.started_at - job.created_at, 3) if job.started_at else None
        log.info("job.claimed", queue_wait=queue_wait, receive_count=message.receive_count, takeover=takeover)
        self.ctx.store.metrics.job_claimed(job, takeover)
        if job.attempts > self.settings.max_attempts:
            self.finish(job, Outcome(error=ATTEMPTS_ERROR.format(attempts=job.attempts - 1,
                                                                 limit=self.settings.max_attempts)),
                        lease, log)
            return
        if job.attempts > 1 and self.clock() >= job.complete_by:
            self.finish(job, Outcome(error="Job did not complete before its complete_by deadline"), lease, log)
            return
        self.current_job = job.id
        self.touch_health()  # the beacon names the job now, not at the next beat
        with self._uses_lock:
            self._active.add(job.id)
        try:
            self.perform(job, lease, log)
        finally:
            self.current_job = None
            self.flush_uses(job.id)
            removed = remove_job_files(self.output_dir, job.id)
            log.debug("job.cleaned", files=removed)
            self.jobs_done += 1

    def skip_expired(self, job: Job, lease: Lease, log: Any) -> None:
        try:
            failed = self.aws("expire", self.ctx.store.transition, job.id, JobStatus.FAILED,
                              from_states=[JobStatus.QUEUED], fields={"error": EXPIRED_ERROR})
        except TransitionConflict as exc:
            self.handle_lost_claim(exc.current, lease, log)
            return
        log.warning("job.expired", reason="complete_by passed before the job started")
        self.settle_final(failed, lease)

    def settle_final(self, job: Job, lease: Lease) -> None:
        """A final job's message: make sure its delivery is queued, then ack. (The
        winner of the terminal write queues it; a duplicate re-ensures it, in case
        that winner died in between.)"""
        if job.outbox == NOTIFY:
            self.outbox.notify(job)
        self.aws("ack", lease.ack)

    def handle_lost_claim(self, current: Job | None, lease: Lease, log: Any) -> None:
        if current is None or current.status.is_terminal:
            log.info("message.dropped", state=current.status.value if current else "missing",
                     reason="job finished or removed meanwhile")
            if current is None:
                self.aws("ack", lease.ack)
            else:
                self.settle_final(current, lease)
            return
        # Another live worker holds the job: this message is a copy. Dropping it is
        # safe: the holder has its own message, and should the holder die with both
        # lost, the outbox entry (due at its lease + grace) brings the job back.
        log.info("message.duplicate_running", holder=current.worker,
                 reason="another worker holds a live lease; copy dropped, no work done")
        self.aws("ack", lease.ack)

    def perform(self, job: Job, lease: Lease, log: Any) -> None:
        task = self.tasks.get(job.type)
        request = parse_job_request(job.type, job.params)
        token = CancelToken()
        phases = PhaseReporter(self.ctx.store, job.id, self.settings.worker_id, log)
        try:
            self.run_task(job, task, request, token, phases, lease, log)
        finally:
            phases.close()

    def run_task(self, job: Job, task: Task | None, request: Any, token: CancelToken, phases: PhaseReporter,
                 lease: Lease, log: Any) -> None:
        started = time.monotonic()
        ctx: TaskContext | None = None
        try:
            if task is None:
                outcome = Outcome(error=f"No task implementation for job type {job.type.value}")
            else:
                if getattr(task, "needs_gpu", False) and self.gpu is not None:
                    # Acquires the node inside the supervised run (lease heartbeat, max_time,
                    # shutdown cover a launch too) and calls gpu.acquire/watch/release.
                    task = GpuTask(task, self.gpu, TaskProcess(self.settings.task_memory_limit_mb,
                                                               self.settings.task_wind_down))
                else:
                    phases.report("rendering")  # no node to wait for: its run is the render
                ctx = TaskContext(job=job, request=request, output_dir=self.output_dir,
                                  cancel=token, log=log, report=phases.report)
                outcome = self.supervisor.run(task, ctx, lease, self.stopping,
                                              self.settings.shutdown_grace, log, on_beat=self.touch_health)
        except Exception as exc:  # noqa: BLE001 - the job fails readably
            log.error("job.setup_failed", exc_info=True)
            outcome = Outcome(error=str(exc) or type(exc).__name__)
        log.info("job.ran", run_time=round(time.monotonic() - started, 3),
                 stopped=outcome.stop.value if outcome.stop else None, failed=outcome.error is not None)
        self.finish(job, outcome, lease, log, phases, node=ctx.node if ctx is not None else None)

    # -- writing the outcome ---------------------------------------------------
    def finish(self, job: Job, outcome: Outcome, lease: Lease, log: Any,
               phases: PhaseReporter | None = None, node: Any = None) -> None:
        """``node``: the GPU node the job ran on, if any."""
        if outcome.stop is not None and self.settle_stop(job, outcome.stop, lease, log):
            return
        if outcome.error is not None:
            error = self.tenant_error(outcome, node, log)
            with lease.kept(self.settings.heartbeat_interval, log):
                self.write_final(job, JobStatus.FAILED, {"error": error}, lease, log)
            return
        result = outcome.result
        assert result is not None
        fields: dict[str, Any] = {"error": None}
        if result.path is not None:
            try:
                # Still ours? Never upload for a job that was cancelled or taken over.
                self.aws("renew", lease.renew)
            except LeaseLost as exc:
                self.finish(job, Outcome(stop=Stop.CLIENT if exc.current and exc.current.status.is_terminal
                                         else Stop.LEASE_LOST), lease, log)
                return
            if phases is not None:
                phases.report("uploading")
            with lease.kept(self.settings.heartbeat_interval, log):
                self.upload_and_write(job, result, fields, lease, log, phases)
            return
        fields["result_text"] = result.text
        with lease.kept(self.settings.heartbeat_interval, log):
            self.write_final(job, JobStatus.SUCCESS, fields, lease, log)

    def tenant_error(self, outcome: Outcome, node: Any, log: Any) -> str:
        """The job's error as its tenant reads it: never a GPU node's name, URL or workload
        id (worker_runtime/tenant_errors.py). What it leaves out goes to the log, with the job id."""
        assert outcome.error is not None
        known = [node, *(self.gpu.recent_nodes() if hasattr(self.gpu, "recent_nodes") else [])]
        error = tenant_error(outcome.error, outcome.public, node_addresses(known))
        if error != outcome.error:
            log.warning("job.node_fault", detail=outcome.error, error=error,
                        workload=getattr(node, "workload", None), node=getattr(node, "name", None),
                        reason="the job's error names the step; the node's address and answer are for the operators")
        return error

    def upload_and_write(self, job: Job, result: Any, fields: dict[str, Any], lease: Lease, log: Any,
                         phases: PhaseReporter | None) -> None:
        """Upload the result, then write the job's final state (under the lease's renewal)."""
        ext = result.ext or result.path.suffix
        # One key per attempt: a worker that loses the final write deletes only
        # what it uploaded itself, never the winner's result.
        key = result_key(job.id, job.attempts, ext)
        ctype = content_type_for(ext)
        try:
            self.ctx.results.upload_file(str(result.path), key, ctype)
        except Exception as exc:  # noqa: BLE001 - S3 refused after boto3's own retries
            log.error("result.upload_failed", exc_info=True)
            self.write_final(job, JobStatus.FAILED,
                             {"error": f"Could not upload the result to S3: {exc}"}, lease, log)
            return
        fields.update(result_key=key, result_content_type=ctype)
        if phases is not None:
            phases.close()  # "uploading" is written before the final state (or given up)
        if not self.write_final(job, JobStatus.SUCCESS, fields, lease, log):
            current = self.aws("get_job", self.ctx.store.get, job.id)
            if current is None or current.result_key != key:
                self.aws("delete_result", self.ctx.results.delete, key)

    def settle_stop(self, job: Job, stop: Stop, lease: Lease, log: Any) -> bool:
        """Apply the stop's rule (worker_runtime/stops.py). False when the job is to be
        written failed with the stop's reason (the outcome's error), which acks after."""
        rule = RULES[stop]
        if rule.record is Record.FAILED:
            return False
        if rule.record is Record.REQUEUE:
            self.release(job, lease, log)  # the message is made visible again at once
            return True
        log.info(rule.event, reason=rule.why)
        if rule.message is MessageFate.ACK:
            self.aws("ack", lease.ack)
        return True

    def write_final(self, job: Job, status: JobStatus, fields: dict[str, Any], lease: Lease,
                    log: Any) -> bool:
        """Conditional terminal write; only the winner queues the delivery. Returns True
        if won. The write puts the job in the outbox, so the delivery happens even if
        this process dies right after it."""
        uses = self.take_uses(job.id)
        fields, add = {**fields, **cost_fields(uses)}, cost_counters(uses)
        try:
            final = self.aws("final_write", self.ctx.store.transition, job.id, status,
                             from_states=[JobStatus.RUNNING], worker=self.settings.worker_id,
                             fields=fields, add=add)
        except TransitionConflict as exc:
            current = exc.current
            if current is not None and current.worker == self.settings.worker_id \
                    and current.status is status and current.finished_at:
                # A retried write whose first try had landed: it is ours after all.
                final = current
            else:
                state = current.status.value if current else "missing"
                log.info("job.final_write_lost", wanted=status.value, state=state,
                         reason="the record changed first (client status or takeover); not overwritten")
                with self._uses_lock:  # the GPU seconds it used still go on the job (flush_uses)
                    self._uses.setdefault(job.id, [])[:0] = uses
                if current is None:
                    self.aws("ack", lease.ack)
                elif current.status.is_terminal:
                    self.settle_final(current, lease)
                return False
        log.info("job.finished", status=status.value, error=final.error,
                 total_time=round(final.finished_at - final.created_at, 3) if final.finished_at else None)
        # A batch member's delivery also completes its batch: that is the deliverer's (the
        # API's handler has the batches), so a member goes through the queue at once.
        if self.delivery is not None and final.outbox == NOTIFY and not final.batch_id:
            self.delivery.final(final)  # its webhook now, the queue as the fallback
            self.aws("ack", lease.ack)
        else:
            self.settle_final(final, lease)
        return True

    def charge_job(self, job_id: str, use: dict[str, Any]) -> None:
        """The GPU manager charged an instance for ``use`` of one attempt of the job (its
        ``on_charged``, at release): priced at GPU_PRICE_PER_HOUR, kept for the job's final
        write, or written at once when this worker is done with the job (a late release)."""
        price = self.settings.price_per_hour(use["instance_type"])
        billed = use["gpu_seconds"] + use["launch_seconds"]
        priced = {**use, "usd": None if price is None else round(billed * price / 3600, 6)}
        with self._uses_lock:
            if job_id in self._active:
                self._uses.setdefault(job_id, []).append(priced)
                return
        self.write_use(job_id, priced)

    def take_uses(self, job_id: str) -> list[dict[str, Any]]:
        with self._uses_lock:
            return self._uses.pop(job_id, [])

    def flush_uses(self, job_id: str) -> None:
        """The job is done here: what its final write did not carry (this worker did not make
        it: a client's cancel, a takeover, a shutdown) goes on the record by itself."""
        with self._uses_lock:
            self._active.discard(job_id)
            uses = self._uses.pop(job_id, [])
        for use in uses:
            try:
                self.write_use(job_id, use)
            except Exception:  # noqa: BLE001 - the receipt misses it; the fleet's books count it idle
                self.log.error("job.cost_unrecorded", job_id=job_id, use=use, exc_info=True)

    def write_use(self, job_id: str, use: dict[str, Any]) -> None:
        job = self.aws("add_gpu_use", self.ctx.store.add_gpu_use, job_id, use)
        if job is not None and job.counted_at is not None:  # final and counted already (a client's cancel)
            self.aws("usage_late_use", self.ctx.usage.record_late_use, job, use)

    def release(self, job: Job, lease: Lease, log: Any) -> None:
        """Shutdown: hand the job back (queued, attempt already counted) and make the
        message visible at once so another worker takes it."""
        try:
            queued = self.aws("release", self.ctx.store.transition, job.id, JobStatus.QUEUED,
                              from_states=[JobStatus.RUNNING], worker=self.settings.worker_id,
                              fields={"worker": None, "lease_expires": None})
        except TransitionConflict:
            log.info("job.release_skipped", reason="the record moved on meanwhile")
            return
        self.aws("release_message", lease.release_message, 0)
        # Its message is back in the queue: the job is owed no copy while it waits there.
        self.aws("mark_dispatched", self.ctx.store.mark_dispatched, job.id, queued.outbox_at, queued.created_at)
        log.info("job.released", reason="worker shutting down; job requeued for another worker")


def cost_counters(uses: list[dict[str, Any]]) -> dict[str, float]:
    """The job record's cost counters that ``uses`` add to (JobStore.add_gpu_use's, in one write)."""
    out: dict[str, float] = {}
    for use in uses:
        for field in ("gpu_seconds", "launch_seconds", "cold_start_seconds", "usd"):
            if use.get(field) is not None:
                out[f"cost_{field}"] = round(out.get(f"cost_{field}", 0.0) + use[field], 6)
    return out


def cost_fields(uses: list[dict[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if uses:
        fields["cost_instance_type"] = uses[-1]["instance_type"]
    if any(use.get("cold_start") for use in uses):
        fields["cost_cold_start"] = True
    return fields
