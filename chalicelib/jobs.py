"""Use cases behind the routes: submit, status, client update, result.

No boto3 here: the store, queue and result store are injected.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Callable, NamedTuple

from .errors import Conflict, InvalidRequest, NotFound
from .job import Job
from .logs import get_logger
from .models import CLIENT_STATES, JobStatus, JobType, StatusUpdate, parse_job_request, parse_model
from .outbox import Outbox
from .results import ResultStore
from .store import DISPATCH, JobExists, JobStore, TransitionConflict

log = get_logger("c3.jobs")

_IDEMPOTENCY_NS = uuid.UUID("6f1f9a52-3a8e-4c39-9a43-6f4d6c1d2e11")


class ClientUpdate(NamedTuple):
    job: Job
    changed: bool  # False: the job was already final and only its data was removed
    removed: bool


def parse_job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest(
            "Malformed job id", [{"field": "id", "message": "must be a UUID"}]
        ) from None


def request_hash(job_type: JobType, params: dict[str, Any]) -> str:
    canonical = json.dumps({"type": job_type.value, "params": params}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobService:
    def __init__(
        self,
        store: JobStore,
        outbox: Outbox,
        results: ResultStore,
        clock: Callable[[], float],
        ttl_days: int = 30,
    ):
        self.store = store
        self.outbox = outbox
        self.results = results
        self.clock = clock
        self.ttl_days = ttl_days

    def submit(
        self,
        job_type: JobType,
        body: Any,
        owner: str,
        idempotency_key: str | None = None,
        *,
        reply_to: str | None = None,
        source: str = "http",
    ) -> tuple[Job, bool]:
        """Validate, write the record (one conditional put), enqueue (one send).

        The record is the commitment: if the send fails, or this process dies before
        it, the job is still owed its message (the outbox) and the reconciler sends
        it. Returns (job, created); created is False for an idempotent replay."""
        request = parse_job_request(job_type, body)
        params = request.model_dump(exclude_none=True)
        now = self.clock()
        digest = request_hash(job_type, params)
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidRequest(
                    "Invalid Idempotency-Key",
                    [{"field": "Idempotency-Key", "message": "must be 1-255 characters"}],
                )
            job_id = str(uuid.uuid5(_IDEMPOTENCY_NS, f"{owner}\n{idempotency_key}"))
        else:
            job_id = str(uuid.uuid4())
        job = Job(
            id=job_id,
            type=job_type,
            params=params,
            status=JobStatus.QUEUED,
            owner=owner,
            created_at=now,
            queued_at=now,
            updated_at=now,
            complete_by=now + request.complete_in,
            max_time=request.max_time,
            expires_at=int(now + self.ttl_days * 86400),
            idempotency_key=idempotency_key,
            request_hash=digest,
            reply_to=reply_to,
            source=source,
        )
        try:
            self.store.create(job)
        except JobExists as exc:
            existing = exc.existing
            if existing is None or existing.request_hash != digest:
                raise Conflict(
                    "Idempotency-Key was already used with a different request",
                    [{"field": "Idempotency-Key", "message": "reused with a different body"}],
                ) from None
            if existing.status is JobStatus.QUEUED:
                # The first try may have died between the record and the send: an
                # extra message is harmless (claims are conditional).
                self.outbox.try_send(DISPATCH, existing)
            log.info("job.submit_replayed", job_id=existing.id, type=job_type.value)
            return existing, False
        sent = self.outbox.try_send(DISPATCH, job)
        log.info("job.submitted", job_id=job.id, type=job_type.value, source=source,
                 dispatched=sent)
        return job, True

    def get(self, job_id: str, owner: str) -> Job:
        job = self.store.get(parse_job_id(job_id))
        # Another key's job is indistinguishable from a missing one.
        if job is None or job.owner != owner:
            raise NotFound(f"Job {job_id} not found")
        return job

    def update(self, job_id: str, owner: str, body: Any) -> ClientUpdate:
        """The client's status change of a queued or running job; with ``remove_data``
        the record and every result object go too, also for a job already final (which
        is otherwise a 409). Objects are deleted before the record, so a failed removal
        can be retried."""
        update: StatusUpdate = parse_model(StatusUpdate, body)
        job = self.get(job_id, owner)
        target = JobStatus(update.status)
        assert target in CLIENT_STATES
        error = update.error or f"Job marked as {target.value} by client"
        changed = True
        try:
            job = self.store.transition(
                job.id, target,
                from_states=[JobStatus.QUEUED, JobStatus.RUNNING],
                owner=owner,
                fields={"error": error},
            )
        except TransitionConflict as exc:
            if exc.current is None or exc.current.owner != owner:
                raise NotFound(f"Job {job_id} not found") from None
            if not update.remove_data:
                raise Conflict(
                    f"Job {job.id} is already {exc.current.status.value}",
                    status=exc.current.status.value,
                ) from None
            job, changed = exc.current, False  # already final: only its data goes
        else:
            log.info("job.client_update", job_id=job.id, status=target.value, remove_data=update.remove_data)
            if not update.remove_data:  # a removed job has nothing left to deliver
                self.outbox.notify(job)
        if update.remove_data:
            objects = self.results.delete_job(job.id)
            self.store.delete(job.id)
            log.info("job.data_removed", job_id=job.id, status=job.status.value, objects=objects)
        return ClientUpdate(job, changed, update.remove_data)

    def result(self, job_id: str, owner: str) -> dict[str, Any]:
        job = self.get(job_id, owner)
        if job.status is not JobStatus.SUCCESS:
            body: dict[str, Any] = {"status": job.status.value}
            if job.error:
                body["job_error"] = job.error
            raise Conflict(f"Job {job.id} has no result: it is {job.status.value}", **body)
        return result_payload(job, self.results)


def result_payload(job: Job, results: ResultStore) -> dict[str, Any]:
    """``{"result_url"}`` for media jobs (presigned now), ``{"text"}`` for text jobs."""
    if job.result_key:
        return {"result_url": results.presign(job.result_key)}
    return {"text": job.result_text or ""}
