"""JobStore: job records in DynamoDB, changed only by conditional writes.

Every status change names the states it may start from (``models.TRANSITIONS``)
and any ownership it depends on (the worker holding the lease, the API key that
created the job). A write whose condition fails never overwrites: it raises
``TransitionConflict`` carrying the record as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from botocore.exceptions import ClientError

from chalicelib.jobs.models import JobStatus, sources_of
from chalicelib.jobs.record import Job
from chalicelib.jobs.stats import record_quietly
from chalicelib.platform.dynamo import Expr, decode_item, encode_item, to_ddb
from chalicelib.platform.metrics import METRICS, Metrics

# The outbox index: a sparse GSI over the jobs that are owed a message (see outbox.py).
OUTBOX_INDEX = "outbox-due"
# A key's jobs by creation time (GET /jobs), and the sparse subset still in flight.
OWNER_INDEX = "owner-created"
INFLIGHT_INDEX = "owner-inflight"
# Every tenant's jobs by creation time, one partition per UTC day (the operators' GET /jobs).
DAY_INDEX = "day-created"
DISPATCH = "dispatch"  # queued or running: the job message must exist
NOTIFY = "notify"  # final: the webhook/event delivery must still happen
FIRST_PHASE = "downloading"  # where a claimed job starts (worker_runtime/phases.py)

class JobExists(Exception):
    def __init__(self, existing: Job | None):
        super().__init__("job id already exists")
        self.existing = existing


class TransitionConflict(Exception):
    """A conditional write lost: ``current`` is the record as it was (None if absent)."""

    def __init__(self, job_id: str, target: JobStatus, current: Job | None):
        state = current.status.value if current else "missing"
        super().__init__(f"job {job_id}: cannot move to {target.value} from {state}")
        self.job_id = job_id
        self.target = target
        self.current = current


class JobStore:
    def __init__(self, dynamodb: Any, table: str, clock: Callable[[], float],
                 outbox_grace: float = 30.0, metrics: Metrics = METRICS, queued_resend: float = 86400.0,
                 stats: Any = None):
        self._ddb = dynamodb
        self.metrics = metrics
        self.stats = stats  # chalicelib.jobs.stats.Stats: the operators' per-minute counters, or None
        self._table = table
        self._clock = clock
        self.outbox_grace = outbox_grace
        self.queued_resend = queued_resend

    # -- reads and creation ---------------------------------------------
    def get(self, job_id: str) -> Job | None:
        resp = self._ddb.get_item(
            TableName=self._table, Key={"id": {"S": job_id}}, ConsistentRead=True
        )
        item = resp.get("Item")
        if not item or "record" in item:  # a batch's record (chalicelib/jobs/batches.py) is no job
            return None
        return Job.from_item(decode_item(item))

    def create(self, job: Job) -> None:
        """Put a new record; raises JobExists (with the existing record) on an id clash.

        The record enters the outbox as owed a dispatch: if its message is never sent
        (the API died between the two writes), the reconciler sends it."""
        job.outbox, job.outbox_at, job.outbox_sends = DISPATCH, job.created_at + self.outbox_grace, 0
        job.inflight_owner = job.owner
        if job.wants_webhook("completed") and job.webhook is None:
            job.webhook = "pending"
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=encode_item(job.to_item()),
                ConditionExpression="attribute_not_exists(#id)",
                ExpressionAttributeNames={"#id": "id"},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise JobExists(self._old_or_fetch(exc, job.id)) from exc
            raise
        self.metrics.job_submitted(job)

    def delete(self, job_id: str) -> None:
        self._ddb.delete_item(TableName=self._table, Key={"id": {"S": job_id}})

    # -- transitions ------------------------------------------------------
    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        from_states: Iterable[JobStatus] | None = None,
        worker: str | None = None,
        owner: str | None = None,
        fields: dict[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> Job:
        """Move a job to ``target`` if it is in one of ``from_states`` (default: every
        state the state machine allows) and, when given, held by ``worker`` / owned by
        ``owner``. Returns the new record."""
        now = self._clock()
        allowed = [s for s in (from_states or sources_of(target)) if s in sources_of(target)]
        expr = Expr()
        status = expr.name("status")
        expr.conditions.append(
            " OR ".join(f"{status} = {expr.value('from_' + s.value, s.value)}" for s in allowed)
        )
        if worker is not None:
            expr.conditions.append(f"{expr.name('worker')} = {expr.value('worker', worker)}")
        if owner is not None:
            expr.conditions.append(f"{expr.name('owner')} = {expr.value('owner', owner)}")
        expr.set("status", target.value)
        expr.set("updated_at", now)
        if target.is_terminal:
            expr.set("finished_at", now)
            expr.removes.extend(["lease_expires", "inflight_owner"])
            self._owe(expr, NOTIFY, now + self.outbox_grace)
        elif target is JobStatus.QUEUED:
            self._owe(expr, DISPATCH, now + self.outbox_grace)
        for attr, value in (fields or {}).items():
            if value is None:
                expr.removes.append(attr)
            else:
                expr.set(attr, value)
        expr.removes.extend(remove)
        return self._update(job_id, target, expr)

    def claim(self, job_id: str, worker: str, lease_seconds: float, start_webhook: bool = False) -> Job:
        """queued -> running, or take over a running job whose lease lapsed.

        The whole claim is one conditional write: attempts + 1, lease owner and
        expiry set together, so two workers can never both hold the job. With
        ``start_webhook`` the first claim also makes the start webhook owed (pending);
        a later claim leaves its state as it is. The phases start again at
        "downloading" (every task first prepares its inputs)."""
        now = self._clock()
        expr = Expr()
        status, lease = expr.name("status"), expr.name("lease_expires")
        queued = expr.value("queued", JobStatus.QUEUED.value)
        running = expr.value("running", JobStatus.RUNNING.value)
        expr.conditions.append(
            f"{status} = {queued} OR ({status} = {running} AND "
            f"(attribute_not_exists({lease}) OR {lease} < {expr.value('now', now)}))"
        )
        expr.set("status", JobStatus.RUNNING.value)
        expr.set("worker", worker)
        expr.set("lease_expires", now + lease_seconds)
        self._owe(expr, DISPATCH, now + lease_seconds + self.outbox_grace)
        expr.set("started_at", now)
        expr.set("updated_at", now)
        expr.set("phase", FIRST_PHASE)
        expr.set("phases", {FIRST_PHASE: now})
        expr.removes.append("progress")
        if start_webhook:
            hook = expr.name("start_webhook")
            expr.sets.append(f"{hook} = if_not_exists({hook}, {expr.value('pending', 'pending')})")
        first = expr.name("first_started_at")
        expr.sets.append(f"{first} = if_not_exists({first}, {expr.value('first', now)})")
        attempts = expr.name("attempts")
        expr.sets.append(
            f"{attempts} = if_not_exists({attempts}, {expr.value('zero', 0)}) + {expr.value('one', 1)}"
        )
        return self._update(job_id, JobStatus.RUNNING, expr)

    def renew_lease(self, job_id: str, worker: str, lease_seconds: float) -> Job:
        """Extend the lease of a running job this worker holds; a conflict means the job
        was cancelled, finished or taken over, and ``current`` says which."""
        now = self._clock()
        expr = Expr()
        expr.conditions.append(
            f"{expr.name('status')} = {expr.value('running', JobStatus.RUNNING.value)}"
        )
        expr.conditions.append(f"{expr.name('worker')} = {expr.value('worker', worker)}")
        expr.set("lease_expires", now + lease_seconds)
        expr.set("outbox_at", now + lease_seconds + self.outbox_grace)
        return self._update(job_id, JobStatus.RUNNING, expr)

    def mark_phase(self, job_id: str, worker: str, phase: str | None, progress: float | None) -> Job:
        """Record where a running job is: a new ``phase`` (entered now; its progress is
        cleared) and/or the node's ``progress``. Only while ``worker`` holds the lease:
        a conflict means the job moved on, and nothing is written."""
        now = self._clock()
        expr = Expr()
        expr.conditions.append(
            f"{expr.name('status')} = {expr.value('running', JobStatus.RUNNING.value)}"
        )
        expr.conditions.append(f"{expr.name('worker')} = {expr.value('worker', worker)}")
        if phase is not None:
            expr.set("phase", phase)
            entered = f"#phase_{phase}"
            expr.names[entered] = phase
            expr.sets.append(f"{expr.name('phases')}.{entered} = {expr.value('entered', now)}")
            if progress is None:
                expr.removes.append("progress")
        if progress is not None:
            expr.set("progress", progress)
        return self._update(job_id, JobStatus.RUNNING, expr)

    def fail_stranded(self, job_id: str, error: str) -> Job:
        """Fail a job nobody is working on: queued, or running with a lapsed lease.
        A job whose holder's lease is live raises TransitionConflict."""
        now = self._clock()
        expr = Expr()
        status, lease = expr.name("status"), expr.name("lease_expires")
        expr.conditions.append(
            f"{status} = {expr.value('queued', JobStatus.QUEUED.value)} OR ({status} = "
            f"{expr.value('running', JobStatus.RUNNING.value)} AND "
            f"(attribute_not_exists({lease}) OR {lease} < {expr.value('now', now)}))"
        )
        for attr, value in (("status", JobStatus.FAILED.value), ("updated_at", now),
                            ("finished_at", now), ("error", error)):
            expr.set(attr, value)
        expr.removes.extend(["lease_expires", "inflight_owner"])
        self._owe(expr, NOTIFY, now + self.outbox_grace)
        return self._update(job_id, JobStatus.FAILED, expr)

    def count_finished(self, job_id: str) -> bool:
        """Count a final job in the JobsFinished metric (and its run time, attempts and
        phases), once: a conditional mark first, then the metric lines. Called on the
        durable path every final job takes (its notify delivery), so the count does not
        hang on the process that wrote the final state staying alive. At most once: a
        process that dies between the mark and the lines loses the count, never doubles it."""
        expr = Expr()
        status = expr.name("status")
        expr.conditions.append(f"attribute_not_exists({expr.name('counted_at')})")
        expr.conditions.append(" OR ".join(
            f"{status} = {expr.value('final_' + s.value, s.value)}" for s in JobStatus if s.is_terminal))
        expr.set("counted_at", self._clock())
        job = self._try_update(job_id, expr)
        if job is None:
            return False  # counted already, gone, or not final
        self.metrics.job_finished(job)
        if self.stats is not None:
            stats = self.stats
            record_quietly(lambda: stats.job_finished(job), "job_finished", job.id)
        return True

    # -- the outbox ---------------------------------------------------------
    @staticmethod
    def _owe(expr: Expr, kind: str, due: float) -> None:
        expr.set("outbox", kind)
        expr.set("outbox_at", due)
        expr.set("outbox_sends", 0)

    def due(self, kind: str, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs owed a ``kind`` message whose due time has passed (oldest first):
        ``{"id", "outbox_at", "outbox_sends"}`` each, from the sparse index."""
        resp = self._ddb.query(
            TableName=self._table, IndexName=OUTBOX_INDEX, Limit=limit,
            KeyConditionExpression="#k = :k AND #at <= :now",
            ExpressionAttributeNames={"#k": "outbox", "#at": "outbox_at"},
            ExpressionAttributeValues={":k": {"S": kind}, ":now": to_ddb(self._clock())},
        )
        return [decode_item(item) for item in resp.get("Items", [])]

    def sent_due(self, created_at: float) -> float:
        """When a queued job whose message was just sent is next owed a copy: the end of
        the current ``queued_resend`` window of its age (its message outlives that: the
        queue keeps it 4 days). Keyed on ``created_at``, so the outbox index keeps the
        queued jobs in submission order (queue_position counts on it)."""
        windows = max(0, int((self._clock() - created_at) // self.queued_resend)) + 1
        return created_at + windows * self.queued_resend

    def mark_dispatched(self, job_id: str, seen_at: float, created_at: float) -> bool:
        """A queued job's message was sent: it is not owed another until ``sent_due``.
        Conditional on the entry being the one seen (queued, due at ``seen_at``); False
        if it moved on (claimed, cancelled, or already marked)."""
        expr = Expr()
        expr.conditions.append(f"{expr.name('status')} = {expr.value('queued', JobStatus.QUEUED.value)}")
        expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', DISPATCH)}")
        expr.conditions.append(f"{expr.name('outbox_at')} = {expr.value('seen', seen_at)}")
        expr.set("outbox_at", self.sent_due(created_at))
        expr.set("dispatch_sent_at", self._clock())
        return self._try_update(job_id, expr) is not None

    def postpone(self, job_id: str, kind: str, seen_at: float, next_at: float) -> bool:
        """Move a due outbox entry to ``next_at`` and count a re-send; False if the entry
        changed meanwhile (claimed, finished, delivered, or another reconciler won)."""
        expr = Expr()
        expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', kind)}")
        expr.conditions.append(f"{expr.name('outbox_at')} = {expr.value('seen', seen_at)}")
        expr.set("outbox_at", next_at)
        sends = expr.name("outbox_sends")
        expr.sets.append(f"{sends} = if_not_exists({sends}, {expr.value('zero', 0)}) + {expr.value('one', 1)}")
        return self.update_raw(job_id, expr) is not None

    def update_raw(self, item_id: str, expr: Expr) -> dict[str, Any] | None:
        """A conditional update of any record of the table (a job's or a batch's): the
        item as written, or None when the condition failed."""
        try:
            resp = self._ddb.update_item(TableName=self._table, Key={"id": {"S": item_id}},
                                         ReturnValues="ALL_NEW", **expr.kwargs())
        except ClientError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return decode_item(resp["Attributes"])

    def settle(self, job_id: str, fields: dict[str, Any], *, done: bool, next_at: float | None = None,
               remove: Iterable[str] = (), lease: tuple[str, float] | None = None) -> Job | None:
        """Record a notification step of a final job: ``done`` takes it out of the
        outbox, otherwise it is due again at ``next_at``. With ``lease`` (the hook's
        attribute and the lease the deliverer took), only while that lease is still the
        hook's: a deliverer whose lease was taken over records nothing. None if the job
        is gone or the lease is not its own."""
        expr = Expr()
        expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', NOTIFY)}")
        self._held(expr, lease)
        for attr, value in fields.items():
            expr.set(attr, value)
        expr.removes.extend(remove)
        if done:
            expr.removes.extend(["outbox", "outbox_at"])
        elif next_at is not None:
            expr.set("outbox_at", next_at)
        return self._try_update(job_id, expr)

    def record_hook(self, job_id: str, fields: dict[str, Any], remove: Iterable[str] = (),
                    lease: tuple[str, float] | None = None) -> Job | None:
        """Record a step of a webhook owed outside the outbox (the start webhook of a job
        that may still be running); ``lease`` as for ``settle``. None if the job is gone."""
        expr = Expr()
        expr.conditions.append(f"attribute_exists({expr.name('id')})")
        self._held(expr, lease)
        for attr, value in fields.items():
            expr.set(attr, value)
        expr.removes.extend(remove)
        return self._try_update(job_id, expr)

    @staticmethod
    def _held(expr: Expr, lease: tuple[str, float] | None) -> None:
        if lease is not None:
            hook, until = lease
            expr.conditions.append(f"{expr.name(f'{hook}_lease')} = {expr.value('held_lease', until)}")

    def take_webhook_lease(self, job_id: str, hold: float, hook: str = "webhook") -> Job | None:
        """Claim the next attempt of a webhook (``hook``: "webhook", the final one, or
        "start_webhook"): one attempt in flight at a time, across every deliverer. The
        final webhook is owed only while the job is in the outbox as "notify". None
        when it is delivered, given up or held."""
        now = self._clock()
        expr = Expr()
        lease = expr.name(f"{hook}_lease")
        expr.conditions.append(f"{expr.name(hook)} = {expr.value('pending', 'pending')}")
        if hook == "webhook":
            expr.conditions.append(f"{expr.name('outbox')} = {expr.value('kind', NOTIFY)}")
        expr.conditions.append(f"attribute_not_exists({lease}) OR {lease} < {expr.value('now', now)}")
        expr.set(f"{hook}_lease", now + hold)
        attempts = expr.name(f"{hook}_attempts")
        expr.sets.append(
            f"{attempts} = if_not_exists({attempts}, {expr.value('zero', 0)}) + {expr.value('one', 1)}"
        )
        return self._try_update(job_id, expr)

    def _try_update(self, job_id: str, expr: Expr) -> Job | None:
        try:
            return self._update(job_id, JobStatus.RUNNING, expr)
        except TransitionConflict:
            return None

    def _update(self, job_id: str, target: JobStatus, expr: Expr) -> Job:
        try:
            resp = self._ddb.update_item(
                TableName=self._table,
                Key={"id": {"S": job_id}},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **expr.kwargs(),
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise TransitionConflict(job_id, target, self._old_or_fetch(exc, job_id)) from exc
            raise
        return Job.from_item(decode_item(resp["Attributes"]))

    def _old_or_fetch(self, exc: ClientError, job_id: str) -> Job | None:
        item = exc.response.get("Item")
        if item:
            return Job.from_item(decode_item(item))
        # Emulators that do not return the old item on a failed condition.
        return self.get(job_id)


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
