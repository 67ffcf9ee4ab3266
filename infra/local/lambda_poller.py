"""Local stand-in for Lambda's SQS event source mappings and EventBridge schedules.

``chalice local`` serves only HTTP, so locally nothing would call the app's
``on_sqs_message`` or ``schedule`` handlers. Each ``schedule`` handler is invoked
with a scheduled event every LOCAL_SCHEDULE_INTERVAL seconds (default: its own
rate). For SQS, this polls each queue the app subscribes to and
invokes the very same handler (``app.handler_map[name]``) with a Lambda-shaped
SQS event, then does what Lambda does with the answer: delete the whole batch on
success, keep it on an exception, and keep only the ``batchItemFailures`` when the
handler reports a partial failure. Kept messages reappear after the queue's own
visibility timeout, as on AWS.

    python -m infra.local.lambda_poller        # polls until SIGINT/SIGTERM

One function alone, as its own Lambda (the production-shaped profile runs one process
per function, each with its role): ``--handler ATTR`` (app.py's attribute, the
template's ``Handler``) with ``--queue NAME`` (its event source) or ``--every SECONDS``.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
import time
import uuid
from typing import Any

from chalice import Chalice
from chalice.app import Rate, ScheduledEventConfig, SQSEventConfig
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from chalicelib.platform import aws
from chalicelib.platform.logs import configure, get_logger
from chalicelib.platform.queue import Queue
from chalicelib.platform.settings import Settings, get_settings

log = get_logger("c3.lambda_poller")


class PollerSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Lambda long-polls for up to 20 s; shorter waits make shutdown quicker.
    poll_wait_seconds: int = Field(20, ge=0, le=20, validation_alias="LAMBDA_POLL_WAIT_SECONDS")
    # Pause after an SQS error before polling again.
    poll_error_backoff: float = Field(1.0, ge=0, validation_alias="LAMBDA_POLL_ERROR_BACKOFF")
    # On shutdown, how long a batch already in a handler may take to finish.
    stop_timeout: float = Field(30.0, ge=0, validation_alias="LAMBDA_POLL_STOP_TIMEOUT")
    # Seconds between runs of each schedule handler; unset: the handler's own rate.
    schedule_interval: float | None = Field(None, gt=0, validation_alias="LOCAL_SCHEDULE_INTERVAL")


class LambdaContext:
    """The few attributes of Lambda's context object a handler may read."""

    def __init__(self, function_name: str, timeout_seconds: float = 60.0):
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 128
        self._timeout_ms = int(timeout_seconds * 1000)

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


def sqs_sources(app: Chalice) -> list[SQSEventConfig]:
    return [s for s in app.event_sources if isinstance(s, SQSEventConfig)]


def scheduled_sources(app: Chalice) -> list[ScheduledEventConfig]:
    return [s for s in app.event_sources if isinstance(s, ScheduledEventConfig)]


RATE_SECONDS = {Rate.MINUTES: 60, Rate.HOURS: 3600, Rate.DAYS: 86400}


class ScheduleRunner:
    """One EventBridge rule: invokes a schedule handler at its rate, as Lambda would."""

    def __init__(self, app: Chalice, source: ScheduledEventConfig, region: str, settings: PollerSettings):
        self.handler = app.handler_map[source.name]
        self.name = source.name
        self.region = region
        expression = source.schedule_expression
        if settings.schedule_interval is not None:
            self.interval = settings.schedule_interval
        elif isinstance(expression, Rate):
            self.interval = float(expression.value * RATE_SECONDS[expression.unit])
        else:
            raise ValueError(f"handler {source.name}: only Rate schedules run locally "
                             "(or set LOCAL_SCHEDULE_INTERVAL)")
        self.log = log.bind(handler=source.name, every=self.interval)
        self._invoking = threading.Lock()

    def event(self) -> dict[str, Any]:
        return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                "source": "aws.events", "account": "000000000000", "region": self.region,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "resources": [f"arn:aws:events:{self.region}:000000000000:rule/{self.name}"], "detail": {}}

    def invoke(self) -> Any:
        with self._invoking:
            try:
                return self.handler(self.event(), LambdaContext(self.name))
            except Exception:  # noqa: BLE001 - EventBridge would just call it again next time
                self.log.error("schedule.handler_failed", exc_info=True, reason="runs again at the next tick")
                return None

    def wait_idle(self, timeout: float) -> bool:
        if self._invoking.acquire(timeout=timeout):
            self._invoking.release()
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        self.log.info("schedule.started")
        while not stop.wait(self.interval):
            self.invoke()
        self.log.info("schedule.stopped")


def _message_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """SQS API shape (``StringValue``) -> Lambda event shape (``stringValue``)."""
    out = {}
    for name, value in attrs.items():
        out[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType"),
        }
    return out


def lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    body = message.get("Body", "")
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": message.get("Attributes", {}),
        "messageAttributes": _message_attributes(message.get("MessageAttributes", {})),
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class QueuePoller:
    """One event source mapping: one queue feeding one handler."""

    def __init__(self, app: Chalice, source: SQSEventConfig, sqs: Any, region: str,
                 settings: PollerSettings, queue_url: str | None = None):
        if source.queue is None:
            raise ValueError(f"handler {source.name}: only queues given by name can be polled locally")
        self.handler = app.handler_map[source.name]
        self.name = source.name
        self.batch_size = min(source.batch_size, 10)
        # Lambda's event source mapping knows its queue by ARN (no GetQueueUrl): the URL may be given.
        self.queue = Queue(sqs, queue_url or source.queue)
        self.sqs = sqs
        self.region = region
        self.settings = settings
        self.log = log.bind(handler=source.name, queue=source.queue)
        self._arn: str | None = None
        self._invoking = threading.Lock()  # held while a batch is in the handler

    @property
    def arn(self) -> str:
        if self._arn is None:
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue.url, AttributeNames=["QueueArn"])
            self._arn = attrs["Attributes"]["QueueArn"]
        return self._arn

    def poll_once(self, wait_seconds: int | None = None) -> int:
        """Receive one batch and hand it to the handler; returns how many messages came."""
        wait = self.settings.poll_wait_seconds if wait_seconds is None else wait_seconds
        resp = self.sqs.receive_message(
            QueueUrl=self.queue.url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
        )
        messages = resp.get("Messages", [])
        if messages:
            self.invoke([lambda_record(m, self.arn, self.region) for m in messages])
        return len(messages)

    def invoke(self, records: list[dict[str, Any]]) -> None:
        with self._invoking:
            self._invoke(records)

    def wait_idle(self, timeout: float) -> bool:
        """Wait for a batch in the handler to finish (a long poll is not waited for)."""
        if self._invoking.acquire(timeout=timeout):
            self._invoking.release()
            return True
        return False

    def _invoke(self, records: list[dict[str, Any]]) -> None:
        try:
            response = self.handler({"Records": records}, LambdaContext(self.name))
        except Exception:  # noqa: BLE001 - Lambda's rule: the whole batch is retried
            self.log.error("poller.handler_failed", exc_info=True, count=len(records),
                           reason="handler raised; the batch reappears after the visibility timeout")
            return
        keep = self._failed_ids(response, records)
        for record in records:
            if record["messageId"] not in keep:
                self.queue.delete(record["receiptHandle"])
        self.log.info("poller.invoked", count=len(records), retried=len(keep))

    def _failed_ids(self, response: Any, records: list[dict[str, Any]]) -> set[str]:
        if not isinstance(response, dict) or not response.get("batchItemFailures"):
            return set()
        ids = {r["messageId"] for r in records}
        failed = {f.get("itemIdentifier") for f in response["batchItemFailures"] if isinstance(f, dict)}
        if not failed <= ids:
            # Lambda treats an unknown or empty identifier as a failure of the whole batch.
            self.log.warning("poller.bad_batch_response", reason="unknown itemIdentifier; batch kept")
            return ids
        return failed  # type: ignore[return-value]

    def run(self, stop: threading.Event) -> None:
        self.log.info("poller.started")
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - emulator restarting, queue missing: keep polling
                self.log.error("poller.receive_failed", exc_info=True,
                               reason=f"retrying in {self.settings.poll_error_backoff} s")
                stop.wait(self.settings.poll_error_backoff)
        self.log.info("poller.stopped")


class PollerThread(threading.Thread):
    def __init__(self, poller: "QueuePoller | ScheduleRunner", stop_event: threading.Event):
        super().__init__(target=poller.run, args=(stop_event,), name=f"poll-{poller.name}", daemon=True)
        self.poller = poller


def start_pollers(app: Chalice, settings: Settings, stop_event: threading.Event,
                  poller_settings: PollerSettings | None = None) -> list[PollerThread]:
    """One daemon thread per SQS or schedule handler of ``app``; they stop when
    ``stop_event`` is set."""
    knobs = poller_settings or PollerSettings()
    sqs = aws.client("sqs", settings.aws_region)
    runners: list[QueuePoller | ScheduleRunner] = [
        QueuePoller(app, source, sqs, settings.aws_region, knobs) for source in sqs_sources(app)]
    runners += [ScheduleRunner(app, source, settings.aws_region, knobs) for source in scheduled_sources(app)]
    threads = []
    for runner in runners:
        thread = PollerThread(runner, stop_event)
        thread.start()
        threads.append(thread)
    return threads


def run_pollers(app: Chalice, settings: Settings, stop_event: threading.Event,
                poller_settings: PollerSettings | None = None) -> None:
    """Poll every SQS handler's queue until ``stop_event`` is set (blocks). On stop, a batch
    already in a handler is finished; an idle long poll is simply abandoned (the daemon
    threads end with the process, and an unreceived message stays in its queue)."""
    knobs = poller_settings or PollerSettings()
    threads = start_pollers(app, settings, stop_event, knobs)
    stop_event.wait()
    for thread in threads:
        if not thread.poller.wait_idle(timeout=knobs.stop_timeout):
            log.warning("poller.abandoned_batch", handler=thread.poller.name,
                        reason="handler still busy at shutdown; its messages will be redelivered")


def one_function(module: Any, handler: str, queue: str | None, every: float | None, wait: int,
                 region: str, queue_url: str | None = None) -> "QueuePoller | ScheduleRunner":
    """The runner of one function named by its template ``Handler`` attribute."""
    app = module.app
    wrapped = getattr(module, handler)
    names = [name for name, fn in app.handler_map.items() if fn is wrapped]
    if not names:
        raise SystemExit(f"app.{handler} is not an event handler of the app")
    source = next(s for s in app.event_sources if s.name == names[0])
    knobs = PollerSettings(LAMBDA_POLL_WAIT_SECONDS=wait, LOCAL_SCHEDULE_INTERVAL=every)
    if isinstance(source, SQSEventConfig):
        if queue != source.queue:
            raise SystemExit(f"app.{handler} subscribes to {source.queue!r}, its event source is {queue!r}")
        return QueuePoller(app, source, aws.client("sqs", region), region, knobs, queue_url)
    if every is None:
        raise SystemExit(f"app.{handler} is a schedule handler: give --every")
    return ScheduleRunner(app, source, region, knobs)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handler", help="only this function (app.py attribute)")
    parser.add_argument("--queue", help="its SQS event source's queue name")
    parser.add_argument("--queue-url", help="that queue's URL (else looked up with GetQueueUrl)")
    parser.add_argument("--every", type=float, help="its schedule, in seconds")
    parser.add_argument("--wait", type=int, default=20, help="long-poll seconds")
    args = parser.parse_args()
    # The Lambda entry point itself, so the handlers are the deployed ones; imported first, as
    # Lambda does, so that the secrets it loads from SSM are in the settings read after it.
    import app as module

    settings = get_settings()
    configure(settings.log_level)

    app = module.app
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("poller.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    if args.handler:
        runner = one_function(module, args.handler, args.queue, args.every, args.wait, settings.aws_region,
                              args.queue_url)
        thread = PollerThread(runner, stop)
        log.info("poller.ready", handlers=[runner.name])
        thread.start()
        stop.wait()
        runner.wait_idle(timeout=PollerSettings().stop_timeout)
        return 0
    log.info("poller.ready", handlers=[s.name for s in sqs_sources(app)],
             schedules=[s.name for s in scheduled_sources(app)])
    run_pollers(app, settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
