"""Use cases behind the routes: submit, status, client update, result.

No boto3 here: the store, queue and result store are injected.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Callable, NamedTuple

from chalicelib.jobs.links import ResultLinks
from chalicelib.jobs.models import CLIENT_STATES, JobStatus, JobType, StatusUpdate, parse_job_request, parse_model
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.queries import JobQueries
from chalicelib.jobs.record import Job
from chalicelib.jobs.results import ResultStore, result_fields
from chalicelib.jobs.store import DISPATCH, JobExists, JobStore, TransitionConflict
from chalicelib.platform.auth import tenant_label
from chalicelib.platform.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from chalicelib.platform.logs import get_logger
from chalicelib.platform.numbers import ranged_int

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


def idempotency_job_id(owner: str, key: str) -> str:
    """The job id an Idempotency-Key stands for (the same for a route and a batch item)."""
    return str(uuid.uuid5(_IDEMPOTENCY_NS, f"{owner}\n{key}"))


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
        queries: JobQueries | None = None,
        max_in_flight: int = 0,
    ):
        self.store = store
        self.outbox = outbox
        self.results = results
        self.clock = clock
        self.ttl_days = ttl_days
        self.queries = queries
        self.max_in_flight = max_in_flight

    def submit(
        self,
        job_type: JobType,
        body: Any,
        owner: str,
        idempotency_key: str | None = None,
        *,
        reply_to: str | None = None,
        source: str = "http",
        retry_of: str | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        check_cap: bool = True,
    ) -> tuple[Job, bool]:
        """Validate, write the record (one conditional put), enqueue (one send).

        The record is the commitment: if the send fails, or this process dies before
        it, the job is still owed its message (the outbox) and the reconciler sends
        it. Returns (job, created); created is False for an idempotent replay. A batch
        passes its member's ``job_id`` (derived from the batch) and checks the cap itself."""
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
            job_id = idempotency_job_id(owner, idempotency_key)
        elif job_id is None:
            job_id = str(uuid.uuid4())
        if check_cap:
            self._check_fair_use(owner, job_id if idempotency_key is not None else None)
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
            retry_of=retry_of,
            priority=request.priority,
            batch_id=batch_id,
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
                self.outbox.dispatch(existing)
            log.info("job.submit_replayed", job_id=existing.id, type=job_type.value)
            return existing, False
        sent = self.outbox.dispatch(job)
        if sent:  # its message is in the queue (and a low job's promotion): no copy is owed while it waits
            self.store.mark_dispatched(job.id, job.outbox_at, job.created_at)
        log.info("job.submitted", job_id=job.id, type=job_type.value, source=source,
                 priority=job.priority, dispatched=sent)
        return job, True

    def _check_fair_use(self, owner: str, replay_id: str | None) -> None:
        """429 once the key has ``max_in_flight`` jobs queued or running (a replay of an
        existing job is never refused). Two racing submits may both pass at the cap's
        edge: the cap is a fair-use bound, not an exact quota."""
        if not self.max_in_flight or self.queries is None:
            return
        if self.queries.in_flight(owner, self.max_in_flight) < self.max_in_flight:
            return
        if replay_id is not None and self.store.get(replay_id) is not None:
            return
        raise TooManyRequests(
            f"This key already has {self.max_in_flight} jobs queued or running",
            [{"field": "X-C3-RENDER-KEY", "message": f"may have at most {self.max_in_flight} jobs in flight "
                                                     "(MAX_IN_FLIGHT_PER_KEY); retry when some finish"}],
            retry_after=30, limit=self.max_in_flight,
        )

    def view(self, job: Job) -> dict[str, Any]:
        """``GET /status``: the record's view, the job's parameters, and where a queued
        job stands. (GET /jobs lists the views without the parameters.)"""
        view = {**job.status_view(), "params": job.params}
        if job.status is JobStatus.QUEUED and self.queries is not None:
            position = self.queries.queue_position(job)
            view["queue_position"] = position.value
            if position.approximate:
                view["queue_position_approximate"] = True
        return view

    def list(self, owner: str | None, query: dict[str, str]) -> dict[str, Any]:
        """``GET /jobs``: the key's jobs, newest first, filtered, a page at a time; every
        tenant's (``owner`` None: an operator), each naming its tenant."""
        assert self.queries is not None
        unknown = sorted(set(query) - {"status", "type", "limit", "cursor"})
        if unknown:
            raise InvalidRequest("Unknown query parameter", [{"field": unknown[0], "message":
                                 "is not a parameter of GET /jobs (status, type, limit, cursor)"}])
        status = _enum_param(JobStatus, query, "status")
        job_type = _enum_param(JobType, query, "type")
        limit = ranged_int(query.get("limit", "20"), "limit", 1, 100)
        if owner is None:
            jobs, cursor = self.queries.list_all(status, job_type, limit, query.get("cursor"), self.ttl_days)
            return {"jobs": [self.operator_view(job, job.status_view()) for job in jobs], "next_cursor": cursor,
                    "scope": "all"}
        jobs, cursor = self.queries.list(owner, status, job_type, limit, query.get("cursor"))
        return {"jobs": [job.status_view() for job in jobs], "next_cursor": cursor, "scope": "own"}

    @staticmethod
    def operator_view(job: Job, view: dict[str, Any]) -> dict[str, Any]:
        """An operator's view of a job names its tenant (the owner's short hash)."""
        return {**view, "tenant": tenant_label(job.owner)}

    def retry(self, job_id: str, owner: str | None, idempotency_key: str | None = None) -> Job:
        """Submit a failed, timed-out or cancelled job's parameters again, as a new job of
        the same tenant (also when an operator asks: ``owner`` None)."""
        old = self.get(job_id, owner)
        owner = old.owner
        if old.status not in RETRYABLE:
            raise Conflict(f"Job {old.id} is {old.status.value}: only failed, timed_out or cancelled jobs "
                           "can be retried", status=old.status.value)
        job, _ = self.submit(old.type, old.params, owner, idempotency_key, reply_to=old.reply_to,
                             source=old.source, retry_of=old.id)
        log.info("job.retried", job_id=job.id, retry_of=old.id)
        return job

    def get(self, job_id: str, owner: str | None) -> Job:
        """The job, if ``owner``'s (any tenant's when None: an operator)."""
        job = self.store.get(parse_job_id(job_id))
        # Another key's job is indistinguishable from a missing one.
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"Job {job_id} not found")
        return job

    def update(self, job_id: str, owner: str | None, body: Any) -> ClientUpdate:
        """The client's status change of a queued or running job; with ``remove_data``
        the record and every result object go too, also for a job already final (which
        is otherwise a 409). Objects are deleted before the record, so a failed removal
        can be retried."""
        update: StatusUpdate = parse_model(StatusUpdate, body)
        job = self.get(job_id, owner)
        owner = job.owner  # an operator's change is conditional on the tenant's ownership too
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
            self.store.count_finished(job.id)  # its delivery, which would count it, goes with the record
            objects = self.results.delete_job(job.id)
            self.store.delete(job.id)
            log.info("job.data_removed", job_id=job.id, status=job.status.value, objects=objects)
        return ClientUpdate(job, changed, update.remove_data)

    def result(self, job_id: str, owner: str | None, links: ResultLinks | None = None,
               base_url: str | None = None) -> dict[str, Any]:
        job = self.get(job_id, owner)
        if job.status is not JobStatus.SUCCESS:
            body: dict[str, Any] = {"status": job.status.value}
            if job.error:
                body["job_error"] = job.error
            raise Conflict(f"Job {job.id} has no result: it is {job.status.value}", **body)
        return result_fields(job, self.results, links, base_url)


RETRYABLE = (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED)


def _enum_param(enum: Any, query: dict[str, str], name: str) -> Any:
    value = query.get(name)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidRequest(f"Invalid {name}", [{"field": name, "message": f"must be one of: {allowed}"}]) from None
