"""Batch submission: up to 100 jobs of any types in one request, and its completion.

    POST /batch {"items": [{"type", "params", "idempotency_key"?}, ...],
                 "priority"?, "notify_url"?}     (defaults for every item's params)

Every item is validated on its own: the answer lists, in order, each item's job id or
its error naming the item's index and field; the valid items are accepted even when
others are not. The batch's record (in the jobs table, ``record = "batch"``) is written
first, with every accepted item's parameters and the job id it will have; then the jobs
are created. The record is in the outbox (kind ``batch``) until the batch is complete:
should the API die mid-way, the reconciler creates the missing jobs from the record
(their ids are fixed, so a job is never created twice), and it also checks, with growing
pauses, whether every member is final. The delivery of each member's final state checks
too, so completion is seen at once. Completion is one conditional write
(``attribute_not_exists(completed_at)``): however many checks race, one wins, and it
puts the batch in the outbox as owed its ``batch.completed`` webhook (delivered like a
job's, chalicelib/delivery/batch_hooks.py), so the webhook goes out exactly once per batch even
when a worker is killed mid-batch.

Member ids: an item's ``idempotency_key`` gives the same id as that key on its route
(a replayed batch finds its jobs); without one the id derives from the batch id and the
item's index, so a replay of a batch sent with an ``Idempotency-Key`` finds them too."""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from chalicelib.jobs.models import HttpUrlStr, JobStatus, JobType, parse_job_request, validation_details
from chalicelib.jobs.outbox import Outbox
from chalicelib.jobs.record import OwedMessages, iso
from chalicelib.jobs.service import JobService, idempotency_job_id, parse_job_id, request_hash
from chalicelib.jobs.store import NOTIFY, JobStore
from chalicelib.platform.dynamo import Expr, decode_item, encode_item
from chalicelib.platform.errors import (C3RenderError, Conflict, NotFound, PayloadTooLarge, TooManyRequests,
                                       UnprocessableRequest)
from chalicelib.platform.logs import get_logger

log = get_logger("c3.batches")

BATCH = "batch"  # outbox kind: the members must exist and the completion be checked
MAX_ITEMS = 100
# The batch's record holds its items' parameters: within DynamoDB's 400 KB per item, with room.
MAX_RECORD_BYTES = 350_000
CREATE_CONCURRENCY = 8  # members written and queued at once (each: one conditional put, one send)
_BATCH_NS = uuid.UUID("0b7f3c2e-8f7a-4f5e-9d43-5a1c4c7e9b21")


class BatchRequest(BaseModel):
    """The body of POST /batch; each item is validated on its own (``BatchItem``)."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(
        ..., min_length=1, max_length=MAX_ITEMS,
        description="The jobs: each {type, params (the body of POST /{type}), idempotency_key?}, "
                    "validated on its own (an invalid item is refused in its answer, the others accepted)")
    priority: Literal["high", "normal", "low"] | None = Field(
        None, description="Every item's priority unless its params set one")
    notify_url: HttpUrlStr | None = Field(
        None, description="Receives batch.completed once every item is final; also every item's "
                          "notify_url unless its params set one")


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: JobType
    params: dict[str, Any]
    idempotency_key: StrictStr | None = Field(None, min_length=1, max_length=255)


@dataclass
class Batch(OwedMessages):
    id: str
    owner: str
    created_at: float
    expires_at: int
    request_hash: str
    members: list[dict[str, Any]]  # {"index", "id", "type", "params", "idempotency_key"?}
    notify_url: str | None = None
    members_created: bool = False
    completed_at: float | None = None
    counts: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def job_ids(self) -> list[str]:
        return [m["id"] for m in self.members]

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Batch":
        data = {k: v for k, v in item.items() if k != "record"}
        data["owner"] = data.pop("batch_owner")
        data["members"] = json.loads(data["members"])
        known = cls.__dataclass_fields__.keys()
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        return cls(**data, extra=extra)

    def to_item(self) -> dict[str, Any]:
        item = {k: v for k, v in self.__dict__.items() if k not in ("extra", "owner") and v is not None}
        item["members"] = json.dumps(self.members, separators=(",", ":"), sort_keys=True)
        # No "owner", "type" or "status": the jobs' indexes and GET /jobs never see a batch.
        return {**item, "record": "batch", "batch_owner": self.owner}


class BatchExists(Exception):
    def __init__(self, existing: Batch | None):
        super().__init__("batch id already exists")
        self.existing = existing


class BatchStore:
    """Batch records, in the jobs table beside the jobs (conditional writes only)."""

    def __init__(self, dynamodb: Any, table: str, jobs: JobStore):
        self._ddb = dynamodb
        self._table = table
        self.jobs = jobs

    def create(self, batch: Batch) -> None:
        try:
            self._ddb.put_item(TableName=self._table, Item=encode_item(batch.to_item()),
                               ConditionExpression="attribute_not_exists(#id)", ExpressionAttributeNames={"#id": "id"})
        except self._ddb.exceptions.ConditionalCheckFailedException:
            raise BatchExists(self.get(batch.id)) from None

    def get(self, batch_id: str) -> Batch | None:
        item = self._ddb.get_item(TableName=self._table, Key={"id": {"S": batch_id}},
                                  ConsistentRead=True).get("Item")
        if not item or item.get("record", {}).get("S") != "batch":
            return None
        return Batch.from_item(decode_item(item))

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        """Each existing member's status (one BatchGetItem per 100 ids; strongly consistent)."""
        out: dict[str, str] = {}
        for start in range(0, len(job_ids), 100):
            keys = [{"id": {"S": i}} for i in job_ids[start:start + 100]]
            request = {self._table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "#id, #s",
                                     "ExpressionAttributeNames": {"#id": "id", "#s": "status"}}}
            for _ in range(10):
                resp = self._ddb.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self._table, []):
                    out[item["id"]["S"]] = item["status"]["S"]
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
        return out

    def update(self, batch_id: str, expr: Expr) -> Batch | None:
        """A conditional update of the batch; None when its condition failed."""
        expr.conditions.append(f"{expr.name('record')} = {expr.value('record', 'batch')}")
        item = self.jobs.update_raw(batch_id, expr)
        return Batch.from_item(item) if item is not None else None


def counts_of(batch: Batch, statuses: dict[str, str]) -> dict[str, int]:
    """Members by status; a member without a record once all were created was removed
    (``remove_data``), one not yet created is still to be queued."""
    counts: dict[str, int] = {}
    for job_id in batch.job_ids:
        status = statuses.get(job_id) or ("removed" if batch.members_created else JobStatus.QUEUED.value)
        counts[status] = counts.get(status, 0) + 1
    return counts


def is_final(status: str) -> bool:
    return status == "removed" or JobStatus(status).is_terminal


class BatchService:
    def __init__(self, jobs: JobService, store: BatchStore, outbox: Outbox, clock: Callable[[], float],
                 grace: float, ttl_days: int = 30):
        self.jobs = jobs
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.grace = grace
        self.ttl_days = ttl_days

    # -- POST /batch -------------------------------------------------------------------
    def submit(self, body: Any, owner: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Per item, in order, ``{"index", "id", "status"}`` or ``{"index", "error", "details"}``."""
        if not isinstance(body, dict):
            raise UnprocessableRequest("Request body must be a JSON object",
                                       [{"field": "body", "message": "must be a JSON object"}])
        try:
            request = BatchRequest.model_validate(body)
        except ValidationError as exc:
            raise UnprocessableRequest("Invalid batch", validation_details(exc)) from None
        batch_id = self._batch_id(owner, idempotency_key)
        answers: list[dict[str, Any]] = []
        members: list[dict[str, Any]] = []
        for index, raw in enumerate(request.items):
            try:
                members.append(self._member(index, raw, request, owner, batch_id))
                answers.append({"index": index})
            except C3RenderError as exc:
                answers.append(_item_error(index, exc))
        members = self._within_cap(members, answers, owner)
        if not members:  # nothing accepted: no batch (each item's answer says why)
            log.info("batch.refused", rejected=len(answers))
            return {"id": None, "accepted": 0, "rejected": len(answers), "items": answers}
        size = len(json.dumps(members, separators=(",", ":")).encode())
        if size > MAX_RECORD_BYTES:
            raise PayloadTooLarge(f"The batch's accepted items take {size} bytes; a batch holds at most "
                                  f"{MAX_RECORD_BYTES}", [{"field": "items", "message": f"must take at most "
                                                           f"{MAX_RECORD_BYTES} bytes together: send fewer per batch"}])
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        now = self.clock()
        batch = Batch(id=batch_id, owner=owner, created_at=now, expires_at=int(now + self.ttl_days * 86400),
                      request_hash=digest, members=members, notify_url=request.notify_url,
                      outbox=BATCH, outbox_at=now + self.grace)
        if request.notify_url:
            batch.webhook = "pending"
        try:
            self.store.create(batch)
        except BatchExists as exc:
            if exc.existing is None or exc.existing.owner != owner or exc.existing.request_hash != digest:
                raise Conflict("Idempotency-Key was already used with a different batch",
                               [{"field": "Idempotency-Key", "message": "reused with a different body"}]) from None
            batch = exc.existing
            log.info("batch.replayed", batch_id=batch.id)
        jobs = self._create_members(batch)
        for answer in answers:
            member = next((m for m in batch.members if m["index"] == answer["index"]), None)
            if member is not None and "error" not in answer:
                answer.update(id=member["id"], status=jobs.get(member["id"], JobStatus.QUEUED.value))
        log.info("batch.submitted", batch_id=batch.id, accepted=len(batch.members),
                 rejected=len(answers) - len(batch.members))
        return {"id": batch.id, "accepted": len(batch.members), "rejected": len(answers) - len(batch.members),
                "items": answers}

    def _batch_id(self, owner: str, key: str | None) -> str:
        if key is None:
            return str(uuid.uuid4())
        if not 1 <= len(key) <= 255:
            raise UnprocessableRequest("Invalid Idempotency-Key",
                                       [{"field": "Idempotency-Key", "message": "must be 1-255 characters"}])
        return str(uuid.uuid5(_BATCH_NS, f"{owner}\n{key}"))

    def _member(self, index: int, raw: dict[str, Any], request: BatchRequest, owner: str,
                batch_id: str) -> dict[str, Any]:
        try:
            item = BatchItem.model_validate(raw)
        except ValidationError as exc:
            raise UnprocessableRequest("Invalid item", [{"field": f"items.{index}.{d['field']}",
                                                         "message": d["message"]}
                                                        for d in validation_details(exc)]) from None
        params = dict(item.params)
        if request.priority is not None:
            params.setdefault("priority", request.priority)
        if request.notify_url is not None:
            params.setdefault("notify_url", request.notify_url)
        try:
            parsed = parse_job_request(item.type, params)
        except C3RenderError as exc:
            raise UnprocessableRequest(exc.message, [{"field": f"items.{index}.params.{d['field']}"
                                                      if d["field"] != "body" else f"items.{index}.params",
                                                      "message": d["message"]} for d in exc.details]) from None
        if item.idempotency_key:
            job_id = idempotency_job_id(owner, item.idempotency_key)
            existing = self.jobs.store.get(job_id)
            if existing is not None and existing.request_hash != request_hash(
                    item.type, parsed.model_dump(exclude_none=True)):
                raise Conflict("Idempotency-Key was already used with a different request",
                               [{"field": f"items.{index}.idempotency_key", "message": "reused with a different body"}])
        else:
            job_id = str(uuid.uuid5(_BATCH_NS, f"{batch_id}\n{index}"))
        member = {"index": index, "id": job_id, "type": item.type.value, "params": params}
        if item.idempotency_key:
            member["idempotency_key"] = item.idempotency_key
        return member

    def _within_cap(self, members: list[dict[str, Any]], answers: list[dict[str, Any]],
                    owner: str) -> list[dict[str, Any]]:
        """MAX_IN_FLIGHT_PER_KEY counts a key's jobs in every lane and every batch: the items
        past the key's room are refused (429 each), replays of existing jobs never."""
        cap, queries = self.jobs.max_in_flight, self.jobs.queries
        if not cap or queries is None:
            return members
        room = cap - queries.in_flight(owner, cap)
        kept = []
        for member in members:
            if room > 0 or self.jobs.store.get(member["id"]) is not None:
                room -= 1
                kept.append(member)
                continue
            answers[member["index"]] = _item_error(member["index"], TooManyRequests(
                f"This key already has {cap} jobs queued or running",
                [{"field": f"items.{member['index']}",
                  "message": f"may have at most {cap} jobs in flight (MAX_IN_FLIGHT_PER_KEY); retry when some finish"}],
                retry_after=30))
        return kept

    def _create_members(self, batch: Batch) -> dict[str, str]:
        """Create every member not created yet (idempotent: the ids are fixed), a few at once;
        then mark the record, so a member missing later was removed, not lost. Status by job
        id out. An error leaves the batch in the outbox: the reconciler finishes it."""

        def create(member: dict[str, Any]) -> tuple[str, str]:
            try:
                job, _ = self.jobs.submit(JobType(member["type"]), member["params"], batch.owner,
                                          member.get("idempotency_key"), job_id=member["id"],
                                          batch_id=batch.id, check_cap=False)
            except Conflict:
                # The item's key was used for another job in between: that job is this member.
                existing = self.jobs.store.get(member["id"])
                if existing is None:
                    raise
                job = existing
            return member["id"], job.status.value

        with ThreadPoolExecutor(max_workers=min(CREATE_CONCURRENCY, len(batch.members))) as pool:
            out = dict(pool.map(create, batch.members))
        if not batch.members_created:
            expr = Expr()
            expr.set("members_created", True)
            self.store.update(batch.id, expr)
        return out

    # -- completion ----------------------------------------------------------------------
    def check(self, batch_id: str, create_missing: bool = False) -> str:
        """Complete the batch if every member is final: one conditional write, whose winner
        queues the batch.completed delivery. Returns what happened. Members not created yet
        are created only with ``create_missing`` (the reconciler, once the submission is due:
        before that the API may still be creating them)."""
        batch = self.store.get(batch_id)
        if batch is None:
            return "missing"
        if batch.completed_at is not None:
            return "completed_before"
        if not batch.members_created:
            if not create_missing:
                return "pending"
            self._create_members(batch)
            batch = self.store.get(batch_id) or batch
        counts = counts_of(batch, self.store.statuses(batch.job_ids))
        if not all(is_final(status) for status in counts):
            return "pending"
        now = self.clock()
        expr = Expr()
        expr.conditions.append(f"attribute_not_exists({expr.name('completed_at')})")
        expr.set("completed_at", now)
        expr.set("counts", counts)
        if batch.webhook == "pending":
            expr.set("outbox", NOTIFY)
            expr.set("outbox_at", now + self.grace)
            expr.set("outbox_sends", 0)
        else:
            expr.removes.extend(["outbox", "outbox_at"])
        done = self.store.update(batch_id, expr)
        if done is None:
            return "completed_before"
        log.info("batch.completed", batch_id=batch_id, counts=counts, webhook=done.webhook)
        if done.webhook == "pending":
            self.outbox.try_send(NOTIFY, batch_id)
        return "completed"

    def resume(self, entry: dict[str, Any]) -> bool:
        """The reconciler's handling of a due batch: create what is missing, check completion."""
        self.check(entry["id"], create_missing=True)
        return True

    # -- GET /batch/{id} -------------------------------------------------------------------
    def view(self, batch_id: str, owner: str) -> dict[str, Any]:
        batch = self.store.get(parse_job_id(batch_id))
        if batch is None or batch.owner != owner:
            raise NotFound(f"Batch {batch_id} not found")
        counts = batch.counts or counts_of(batch, self.store.statuses(batch.job_ids))
        view: dict[str, Any] = {"id": batch.id, "created_at": iso(batch.created_at), "total": len(batch.members),
                                "counts": counts, "completed": batch.completed_at is not None,
                                "jobs": batch.job_ids}
        if batch.completed_at is not None:
            view["completed_at"] = iso(batch.completed_at)
        if batch.webhook:
            view["webhook"] = {"status": batch.webhook, "attempts": batch.webhook_attempts}
            if batch.webhook_error:
                view["webhook"]["last_error"] = batch.webhook_error
        return view


def _item_error(index: int, exc: C3RenderError) -> dict[str, Any]:
    return {"index": index, "error": exc.message, "code": exc.status_code,
            "details": exc.details or [{"field": f"items.{index}", "message": exc.message}]}

