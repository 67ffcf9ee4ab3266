"""Queue-driven submission: one SQS message on the intake queue is one job request.

    {"type": "csm", "params": {...same body as POST /csm...},
     "idempotency_key": "optional, 1-255 chars", "reply_to": "optional queue name or URL"}

The params go through the same models and ``JobService.submit`` as the HTTP routes.
The job id derives from ``idempotency_key``, or from the SQS message id when there is
none, so a redelivered message finds its job instead of creating a second one.

Per message the outcome is one of:
- created / replayed: a ``job.submitted`` event goes out (reply_to or events queue);
- rejected (not JSON, unknown type, a field breaking a rule, or the integration's
  in-flight cap MAX_IN_FLIGHT_PER_KEY reached): an ``intake.rejected`` event names each
  field and rule (or the limit); no job; the message is deleted (not retried, so a full
  cap never burns receive counts into the intake DLQ);

Each integration (its ``reply_to`` queue; the events queue's senders share one) is an
owner of its own, with its own in-flight cap: one integration cannot fill another's.
- a transient failure (DynamoDB, SQS): the message is reported as a batch item
  failure, so SQS delivers it again and, past maxReceiveCount, dead-letters it.
  A job whose record was written is never failed for a send that did not go
  through: the outbox owes it its message (see outbox.py).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from chalicelib.delivery.batch import partial_batch
from chalicelib.delivery.events import EventPublisher, rejected_event
from chalicelib.jobs.models import KNOWN_FIELDS, JobType, validation_details
from chalicelib.jobs.service import JobService
from chalicelib.jobs.stats import record_quietly
from chalicelib.platform.auth import ANONYMOUS
from chalicelib.platform.errors import Conflict, InvalidRequest, TooManyRequests
from chalicelib.platform.json_body import parse_json
from chalicelib.platform.logs import get_logger
from chalicelib.platform.metrics import METRICS
from chalicelib.platform.settings import Settings

log = get_logger("c3.intake")

# Owner of queue-submitted jobs when the API has keys: the HTTP owners are key
# hashes, so intake jobs (and their idempotency keys) never collide with theirs.
INTAKE_OWNER = "queue:intake"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


class IntakeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: JobType
    params: dict[str, Any]
    idempotency_key: StrictStr | None = Field(None, min_length=1, max_length=255)
    reply_to: StrictStr | None = Field(None, min_length=1, max_length=1024)


class Rejected(Exception):
    """The message can never succeed: answer with an error event and delete it."""

    def __init__(self, error: str, details: list[dict[str, str]], reply_to: str | None = None,
                 idempotency_key: str | None = None):
        super().__init__(error)
        self.error = error
        self.details = details
        self.reply_to = reply_to
        self.idempotency_key = idempotency_key


def _queue_name(name_or_url: str) -> str:
    if name_or_url.startswith(("http://", "https://")):
        return name_or_url.rstrip("/").rsplit("/", 1)[-1]
    return name_or_url


def intake_owner(settings: Settings, reply_to: str | None = None) -> str:
    """With no API keys every HTTP caller is ``anonymous``; intake jobs join them so
    that ``GET /status`` shows them locally. With keys each integration, told apart by
    its ``reply_to`` queue, gets an owner (and an in-flight cap) of its own."""
    if not settings.api_key_list:
        return ANONYMOUS
    return f"{INTAKE_OWNER}:{_queue_name(reply_to)}" if reply_to else INTAKE_OWNER


class IntakeHandler:
    def __init__(self, service: JobService, events: EventPublisher, settings: Settings):
        self.service = service
        self.events = events
        self.settings = settings
        # Events must never be sent into the system's own work queues.
        self._own_queues = {_queue_name(q) for q in
                            (*settings.lane_queues.values(), settings.jobs_dlq, settings.intake_queue,
                              settings.webhooks_queue)}

    # -- a Lambda batch ----------------------------------------------------------
    def handle_batch(self, records: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Lambda SQS records in; ``{"batchItemFailures": [...]}`` out (only the
        messages that hit a transient failure are redelivered)."""
        return partial_batch(records, lambda r: self.handle(r.get("body", ""), r.get("messageId", "")),
                             log, "intake.retry")

    # -- one message -------------------------------------------------------------
    def handle(self, body: str, message_id: str) -> str:
        """Returns ``created``, ``replayed`` or ``rejected``; raises on a transient
        failure, so the message is delivered again (a replay re-sends a queued job's
        message, in case the first try died before its send)."""
        try:
            return self._submit(body, message_id)
        except Rejected as rej:
            self._reject(rej, message_id)
            return "rejected"

    def _submit(self, body: str, message_id: str) -> str:
        request = self.parse(body)
        key = request.idempotency_key or message_id
        try:
            job, created = self.service.submit(
                request.type, request.params, intake_owner(self.settings, request.reply_to), key,
                reply_to=request.reply_to, source="intake",
            )
        except TooManyRequests as exc:
            limit = self.settings.max_in_flight_per_key
            raise Rejected(exc.message, [{"field": "reply_to", "message": (
                f"this integration may have at most {limit} jobs queued or running "
                "(MAX_IN_FLIGHT_PER_KEY); send again when some finish")}],
                request.reply_to, request.idempotency_key) from None
        except Conflict as exc:
            raise Rejected(exc.message, [{"field": "idempotency_key",
                                          "message": "was already used with a different request"}],
                           request.reply_to, request.idempotency_key) from None
        except InvalidRequest as exc:
            details = [{"field": f"params.{d['field']}" if d["field"] != "body" else "params",
                        "message": d["message"]} for d in exc.details]
            raise Rejected(exc.message, details, request.reply_to, request.idempotency_key) from None
        self.events.submitted(job)
        log.info("intake.accepted", job_id=job.id, message_id=message_id, type=job.type.value,
                 replayed=not created, reply_to=job.reply_to)
        return "created" if created else "replayed"

    def parse(self, body: str) -> IntakeMessage:
        size = len(body.encode())
        if size > self.settings.max_body_bytes:
            raise Rejected(f"Message body is {size} bytes; the limit is {self.settings.max_body_bytes}",
                           [{"field": "body", "message": f"must be at most {self.settings.max_body_bytes} bytes"}])
        try:
            data = parse_json(body, field="body", what="Message body")
        except InvalidRequest as exc:
            # A queue message has no Content-Type to blame: say what the body must be.
            details = [{"field": d["field"], "message": d["message"] if d["message"].startswith("must")
                        else f"must be a JSON object ({d['message']})"} for d in exc.details]
            raise Rejected(exc.message, details) from None
        if not isinstance(data, dict):
            raise Rejected("Message body must be a JSON object",
                           [{"field": "body", "message": "must be a JSON object"}])
        reply_to = self._usable_reply_to(data.get("reply_to"))
        key = data.get("idempotency_key") if isinstance(data.get("idempotency_key"), str) else None
        try:
            request = IntakeMessage.model_validate(data)
        except ValidationError as exc:
            raise Rejected("Invalid intake message", validation_details(exc), reply_to, key) from None
        if request.reply_to is not None:
            problem = self.reply_to_problem(request.reply_to)
            if problem:
                raise Rejected("Invalid intake message", [{"field": "reply_to", "message": problem}],
                               None, key)
        return request

    def reply_to_problem(self, reply_to: str) -> str | None:
        """Why events cannot go to ``reply_to``, or None if they can."""
        name = _queue_name(reply_to)
        if name.endswith(".fifo"):
            return "must be a standard queue: FIFO queues are not supported"
        if not _QUEUE_NAME.match(name):
            return "must be an SQS queue name (1-80 letters, digits, '-' or '_') or a queue URL"
        if name in self._own_queues:
            return "must not be one of the system's own work queues"
        return None

    def _usable_reply_to(self, value: Any) -> str | None:
        return value if isinstance(value, str) and value and not self.reply_to_problem(value) else None

    def _reject(self, rej: Rejected, message_id: str) -> None:
        event = rejected_event(rej.error, rej.details, self.service.clock(), message_id,
                               rej.idempotency_key)
        log.warning("intake.rejected", message_id=message_id, error=rej.error, details=rej.details,
                    reason="no job created; the message is deleted, not retried")
        METRICS.bad_input((d["field"] for d in rej.details), "intake", KNOWN_FIELDS)
        stats = self.service.store.stats
        if stats is not None:  # the operators' page lists the last hour's rejections
            entry = {"message_id": message_id, "error": rej.error[:300],
                     "fields": ", ".join(sorted({str(d.get("field")) for d in rej.details}))[:300]}
            record_quietly(lambda: stats.incident("intake_rejections", entry), "intake_rejection")
        if rej.reply_to:
            try:
                self.events.rejected(event, rej.reply_to)
                return
            except (ClientError, BotoCoreError) as exc:
                log.error("intake.reply_to_failed", message_id=message_id, queue=rej.reply_to,
                          reason=f"{type(exc).__name__}: {exc}; using the events queue")
        self.events.rejected(event, None)

