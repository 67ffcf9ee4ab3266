"""SQS queues: the job queue carries only ``{"id": ...}``; the record is the truth."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any


def job_id_of(body: str) -> str | None:
    """The job id in a ``{"id": ...}`` message body, or None if the body is malformed."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


@dataclass(frozen=True)
class Message:
    body: str
    receipt: str
    message_id: str
    receive_count: int
    sent_at: float | None
    # The queue it was received from (the worker acks and renews it there).
    origin: "Queue | None" = field(default=None, compare=False, repr=False)

    def job_id(self) -> str | None:
        """The job id in the body, or None if the body is malformed."""
        return job_id_of(self.body)


class Queue:
    """One named SQS queue; its URL is looked up once, on first use."""

    def __init__(self, sqs: Any, name: str):
        self._sqs = sqs
        self.name = name
        self._url: str | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        if self._url is None:
            with self._lock:
                if self._url is None:
                    if self.name.startswith(("http://", "https://")):
                        self._url = self.name
                    else:
                        self._url = self._sqs.get_queue_url(QueueName=self.name)["QueueUrl"]
        return self._url

    def send_json(self, payload: dict[str, Any], delay: int = 0) -> str:
        return self.send_body(json.dumps(payload), delay)

    def send_body(self, body: str, delay: int = 0) -> str:
        extra = {"DelaySeconds": max(0, min(int(delay), 900))} if delay else {}
        resp = self._sqs.send_message(QueueUrl=self.url, MessageBody=body, **extra)
        return resp["MessageId"]

    def receive(self, wait_seconds: int, visibility: int, max_messages: int = 1) -> list[Message]:
        resp = self._sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        out = []
        for m in resp.get("Messages", []):
            attrs = m.get("Attributes", {})
            sent = attrs.get("SentTimestamp")
            out.append(
                Message(
                    body=m.get("Body", ""),
                    receipt=m["ReceiptHandle"],
                    message_id=m["MessageId"],
                    receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
                    sent_at=int(sent) / 1000 if sent else None,
                    origin=self,
                )
            )
        return out

    def delete(self, receipt: str) -> None:
        self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def depth(self) -> dict[str, int]:
        """Messages visible, in flight (received, not deleted) and delayed (approximate)."""
        attrs = self._sqs.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages",
                                               "ApproximateNumberOfMessagesNotVisible",
                                               "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return {"messages": int(attrs.get("ApproximateNumberOfMessages", 0)),
                "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0))}

    def set_visibility(self, receipt: str, seconds: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=int(seconds)
        )


class JobQueue(Queue):
    """A queue whose messages name one job: ``{"id": ...}`` (jobs, webhooks)."""

    def send(self, job_id: str, delay: int = 0) -> str:
        return self.send_json({"id": job_id}, delay)
