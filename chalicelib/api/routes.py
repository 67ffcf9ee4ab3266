"""The Chalice application: thin routes over JobService, errors mapped in one place."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError
from chalice import Chalice, Rate, Response

from chalicelib.api.health import HealthReport
from chalicelib.api.openapi import openapi_document
from chalicelib.api.ui import register_ui
from chalicelib.api.waiting import preferred_wait, wait_final
from chalicelib.api.wait_holds import WaitHolds
from chalicelib.context import Context
from chalicelib.delivery.batch_hooks import BatchHooks
from chalicelib.delivery.dead_letters import handle_dead_letters
from chalicelib.delivery.deliveries import DeliveryHandler
from chalicelib.delivery.events import EventPublisher
from chalicelib.delivery.intake import IntakeHandler
from chalicelib.delivery.webhooks import WebhookSender
from chalicelib.fleet.reaper import reap_gpus
from chalicelib.fleet.settings import FleetSettings
from chalicelib.jobs.batches import BATCH, BatchService, BatchStore
from chalicelib.jobs.models import KNOWN_FIELDS, JobStatus, JobType
from chalicelib.jobs.outbox import Reconciler
from chalicelib.jobs.record import Job
from chalicelib.jobs.service import JobService, parse_job_id
from chalicelib.jobs.stats import busy_count, record_quietly
from chalicelib.platform.auth import Caller, identify
from chalicelib.platform.errors import C3RenderError, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from chalicelib.platform.json_body import parse_json
from chalicelib.platform.logs import configure, get_logger
from chalicelib.platform.metrics import METRICS
from chalicelib.platform.numbers import ascii_int

log = get_logger("c3.api")
JSON_TYPES = ["application/json"]
SINGLE_HEADERS = ("X-C3-RENDER-KEY", "Authorization")  # credentials: a second copy is refused


def _multi_headers(request: Any) -> dict[str, list[str]]:
    """Every copy of each header, by lower-case name (API Gateway's multiValueHeaders)."""
    out: dict[str, list[str]] = {}
    for name, values in (request.to_original_event().get("multiValueHeaders") or {}).items():
        out.setdefault(name.lower(), []).extend(values or [])
    return out


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body), status_code=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def in_error_format(response: Response) -> Response:
    """Chalice's own answers, made before a view runs (405 wrong method, 415 wrong
    Content-Type, 500 on an escaped exception), as ``{"Code", "Message"}``: rewritten
    into the API's error format, naming the field and the rule."""
    body = response.body
    if not (isinstance(body, dict) and set(body) == {"Code", "Message"}):
        return response
    out: dict[str, Any] = {"error": body["Message"]}
    if response.status_code == 405:
        allowed = response.headers.get("Allow", "")
        out["details"] = [{"field": "method", "message": f"must be one of: {allowed}"}]
    elif response.status_code == 415:
        out["details"] = [{"field": "Content-Type", "message": f"must be one of: {', '.join(JSON_TYPES)}"}]
    headers = {**response.headers, "Content-Type": "application/json"}
    return Response(body=json.dumps(out), status_code=response.status_code, headers=headers)


def create_app(ctx: Context, events: Any = None) -> Chalice:
    settings = ctx.settings
    configure(settings.log_level)
    app = Chalice(app_name="c3-render")
    app.log.handlers.clear()  # Our JSON handler on the root logger does the logging.
    app.register_middleware(lambda event, get_response: in_error_format(get_response(event)), "http")
    if events is None:
        events = EventPublisher(ctx.sqs, settings.events_queue, ctx.results, ctx.clock)
    service = JobService(ctx.store, ctx.outbox, ctx.results, ctx.clock, settings.job_ttl_days,
                         ctx.queries, settings.max_in_flight_per_key)
    batch_store = BatchStore(ctx.dynamodb, settings.jobs_table, ctx.store)
    batches = BatchService(service, batch_store, ctx.outbox, ctx.clock, settings.outbox_grace,
                           settings.job_ttl_days)
    health_report = HealthReport(ctx.lanes, ctx.dlq, ctx.store, ctx.queries, ctx.registry,
                                 ctx.beacons, ctx.clock, settings.health_cache_seconds, FleetSettings(),
                                 ctx.traffic, settings.price_per_hour)
    wait_holds = WaitHolds(ctx.dynamodb, settings.jobs_table, settings.max_wait_holds_per_key, ctx.clock)
    keys, operator_keys = settings.api_key_list, settings.operator_key_list
    if not keys:
        log.warning("api.open", reason="C3_RENDER_API_KEY is not set: every request is accepted (local development only)")

    def handled(fn: Callable[..., Any]) -> Callable[..., Response]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                out = fn(*args, **kwargs)
                return out if isinstance(out, Response) else _json_response(out)
            except C3RenderError as exc:
                if isinstance(exc, (InvalidRequest, PayloadTooLarge)):
                    METRICS.bad_input((d["field"] for d in exc.details), "http", KNOWN_FIELDS)
                return _json_response(exc.to_body(), exc.status_code, exc.headers)
            except (ClientError, BotoCoreError) as exc:
                log.error("api.backend_error", exc_info=True, reason=str(exc))
                return _json_response({"error": "A backing AWS service is unavailable; retry later"}, 503)

        return wrapper

    def header(name: str) -> str | None:
        """A request header that may appear once (400 naming it when repeated: which copy
        counts would depend on the proxy). API Gateway and the local server put every
        copy in the event's multiValueHeaders; ``headers`` holds only one."""
        request = app.current_request
        copies = _multi_headers(request).get(name.lower())
        if copies is not None and len(copies) > 1:
            raise InvalidRequest(f"Repeated {name} header",
                                 [{"field": name, "message": "must be sent at most once"}])
        return request.headers.get(name.lower())

    def caller() -> Caller:
        for name in SINGLE_HEADERS:
            header(name)
        return identify(app.current_request.headers, keys, operator_keys)

    def owner() -> str:
        return caller().owner

    def prefer_wait() -> int | None:
        """``Prefer: wait`` from every Prefer header (RFC 7240 allows several), parsed
        before the route writes anything."""
        request = app.current_request
        copies = _multi_headers(request).get("prefer") or [request.headers.get("prefer") or ""]
        return preferred_wait(", ".join(copies))

    def waited(job: Job, seconds: int | None, brief: bool = False, operator: bool = False) -> Response:
        """The job's view (``brief``: only id and status, the seed's submit answer), after
        waiting for it to be final when the client asks to (``Prefer: wait=N``); an
        operator's names the job's tenant."""
        def view(job: Job) -> dict[str, Any]:
            shown = service.view(job)
            return service.operator_view(job, shown) if operator else shown

        who = owner() if seconds is not None else ""
        if seconds is None or not wait_holds.acquire(who):
            # Over the key's bound on concurrent holds (MAX_WAIT_HOLDS_PER_KEY): answered at
            # once, and without Preference-Applied the client knows it did not wait.
            return _json_response({"id": job.id, "status": job.status.value} if brief else view(job))
        try:
            job = wait_final(lambda: ctx.store.get(job.id) or job, seconds)
        finally:
            wait_holds.release(who)
        return _json_response(view(job), headers={"Preference-Applied": f"wait={seconds}"})

    def base_url() -> str:
        """The API's public base URL: PUBLIC_API_URL, or how this request reached it."""
        if settings.public_api_url:
            return settings.public_api_url
        request = app.current_request
        host = request.headers.get("host", "127.0.0.1")
        proto = request.headers.get("x-forwarded-proto", "http")
        stage = request.context.get("stage") if host.endswith(".amazonaws.com") else None
        return f"{proto}://{host}" + (f"/{stage}" if stage else "")

    def body() -> Any:
        raw = app.current_request.raw_body or b""
        if len(raw) > settings.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body is {len(raw)} bytes; the limit is {settings.max_body_bytes}",
                [{"field": "body", "message": f"must be at most {settings.max_body_bytes} bytes"}],
            )
        return parse_json(raw)

    @app.route("/")
    @handled
    def health() -> dict[str, Any]:
        return {"service": "c3-render", "status": "ok"}

    @app.route("/openapi.json")
    @handled
    def openapi() -> dict[str, Any]:
        return openapi_document()

    register_ui(app)  # GET /ui: the operators' page (static; its data comes from the routes below)

    def submit_route(job_type: JobType) -> None:
        @handled
        def submit() -> dict[str, Any]:
            # Every header and the body are checked before the write: an error answer
            # leaves no job behind.
            who = owner()
            seconds = prefer_wait()
            key = header("Idempotency-Key")
            data = body()
            job, _ = service.submit(job_type, data, who, key)
            return waited(job, seconds, brief=True)

        submit.__name__ = f"submit_{job_type.value}"
        app.route(f"/{job_type.value}", methods=["POST"], content_types=JSON_TYPES)(submit)

    for job_type in JobType:
        submit_route(job_type)

    @app.route("/batch", methods=["POST"], content_types=JSON_TYPES)
    @handled
    def submit_batch() -> dict[str, Any]:
        who = owner()
        return batches.submit(body(), who, app.current_request.headers.get("idempotency-key"))

    @app.route("/batch/{batch_id}")
    @handled
    def batch_status(batch_id: str) -> dict[str, Any]:
        return batches.view(batch_id, owner())

    @app.route("/status/{job_id}")
    @handled
    def status(job_id: str) -> Response:
        who = caller()
        seconds = prefer_wait()
        return waited(service.get(job_id, who.scope), seconds, operator=who.operator)

    @app.route("/job/{job_id}", methods=["POST"], content_types=JSON_TYPES)
    @handled
    def update(job_id: str) -> dict[str, Any]:
        outcome = service.update(job_id, caller().scope, body())
        job = outcome.job
        if not outcome.changed:
            return {"message": f"Job {job.id} was already {job.status.value}; its data was removed"}
        removed = "; its data was removed" if outcome.removed else ""
        return {"message": f"Job {job.id} marked as {job.status.value}{removed}"}

    @app.route("/result/{job_id}")
    @handled
    def result(job_id: str) -> dict[str, Any]:
        return service.result(job_id, caller().scope, ctx.links, base_url())

    @app.route("/results/{job_id}")
    @handled
    def result_link(job_id: str) -> Response:
        """A durable result link: no key (the token is the credential), 302 to a URL
        presigned now."""
        query = app.current_request.query_params or {}
        if ctx.links is None:
            raise NotFound("Result links are not enabled (set RESULT_LINK_SECRET)")
        if query.get("expires") is not None:
            ascii_int(query["expires"], "expires", "must be a whole number of seconds in ASCII digits", 12)
        problem = ctx.links.problem(job_id, query.get("expires"), query.get("token"))
        if problem:
            raise Forbidden("This result link does not open the job", [{"field": "token", "message": problem}])
        job = ctx.store.get(parse_job_id(job_id))
        if job is None or job.status is not JobStatus.SUCCESS or not job.result_key:
            raise NotFound(f"Job {job_id} has no result")
        return Response(body="", status_code=302, headers={"Location": ctx.results.presign(job.result_key)})

    @app.route("/jobs")
    @handled
    def jobs() -> dict[str, Any]:
        return service.list(caller().scope, dict(app.current_request.query_params or {}))

    @app.route("/jobs/{job_id}/retry", methods=["POST"], content_types=JSON_TYPES)
    @handled
    def retry(job_id: str) -> dict[str, Any]:
        who = caller()
        job = service.retry(job_id, who.scope, header("Idempotency-Key"))
        return {"id": job.id, "status": job.status.value, "retry_of": job.retry_of}

    @app.route("/jobs/{job_id}/deliveries")
    @handled
    def job_deliveries(job_id: str) -> dict[str, Any]:
        return service.deliveries(job_id, caller().scope)  # an operator's: any tenant's job

    @app.route("/jobs/{job_id}/redeliver", methods=["POST"], content_types=JSON_TYPES)
    @handled
    def redeliver(job_id: str) -> Response:
        who = caller().scope  # the job's owner, or an operator (the operators' page redelivers)
        raw = app.current_request.raw_body or b""
        return _json_response(service.redeliver(job_id, who, body() if raw.strip() else None), 202)

    @app.route("/usage")
    @handled
    def usage() -> dict[str, Any]:
        return ctx.usage.report(owner(), dict(app.current_request.query_params or {}))

    @app.route("/health")
    @handled
    def service_health() -> dict[str, Any]:
        """Liveness for anyone; the details (queue, fleet, spend) for a valid key."""
        try:
            owner()
        except C3RenderError:
            return {"status": "ok", "service": "c3-render"}
        return health_report.snapshot()

    @app.route("/incidents")
    @handled
    def incidents() -> dict[str, Any]:
        """The last hour's dead letters and intake rejections: operator keys only (any
        caller while the API is open: no keys configured)."""
        who = caller()
        if not who.operator and (keys or operator_keys):
            raise Forbidden("Only an operator key (C3_RENDER_OPERATOR_KEYS) reads the incidents",
                            [{"field": "X-C3-RENDER-KEY", "message": "must be an operator key"}])
        return ctx.stats.incidents()

    @app.route("/stats")
    @handled
    def stats() -> dict[str, Any]:
        """The last hour, a minute at a time (the operators' plots): from the per-minute
        counters chalicelib/jobs/stats.py keeps, one BatchGetItem. Like /health's details,
        fleet-wide figures need a valid key."""
        owner()
        return ctx.stats.last_hour()

    webhooks = WebhookSender(
        settings.webhook_attempts, settings.webhook_interval, settings.webhook_timeout,
        settings.webhook_secret, allow_private=settings.allow_private_urls,
    )
    batch_hooks = BatchHooks(batch_store, ctx.outbox, webhooks, ctx.clock, settings.outbox_grace)
    delivery = DeliveryHandler(ctx.store, ctx.outbox, events, webhooks, ctx.results, ctx.clock,
                               settings.outbox_grace, ctx.links, batches, batch_hooks,
                               schedule=settings.retry_schedule, usage=ctx.usage)
    reconciler = Reconciler(ctx.store, ctx.outbox, ctx.clock, settings.outbox_grace,
                            settings.outbox_max_backoff, handlers={BATCH: batches.resume})

    # Every SQS handler answers with a partial batch response: only the messages listed
    # are redelivered (the event source mappings have ReportBatchItemFailures on, see infra/aws).
    @app.on_sqs_message(queue=settings.jobs_dlq, batch_size=10)
    def dead_letters(event: Any) -> dict[str, Any]:
        return handle_dead_letters((record.to_dict() for record in event), ctx.store, ctx.outbox)

    @app.on_sqs_message(queue=settings.webhooks_queue, batch_size=10, name="webhooks")
    def deliveries(event: Any) -> dict[str, Any]:
        return delivery.handle_batch(record.to_dict() for record in event)

    @app.schedule(Rate(1, unit=Rate.MINUTES), name="reconcile")
    def reconcile(event: Any) -> dict[str, Any]:
        report = reconciler.run_once()
        return {"resent": report.resent, "failed": report.failed}

    # Orphaned, idle-expired, surplus and past-lifetime GPU instances are stopped here too,
    # not only by the workers: the worker service scales to zero, and what it leaves must
    # still be stopped. The job queues' depth, every lane summed, is the pool's demand (chalicelib/fleet/pool.py).
    @app.schedule(Rate(1, unit=Rate.MINUTES), name="gpu_reaper")
    def gpu_reaper(event: Any) -> dict[str, Any]:
        report = reap_gpus(ctx.registry, clock=ctx.clock, queue=ctx.lanes, beacons=ctx.beacons,
                           queries=ctx.queries, traffic=ctx.traffic)
        sample_gpus()
        return report

    def sample_gpus() -> None:
        """This minute's GPU seconds for GET /stats: the instances rented (billed) and busy."""
        def write() -> None:
            gpus = ctx.registry.all()
            ctx.stats.gpu_sample(len(gpus), busy_count(gpus))

        record_quietly(write, "gpu_sample")

    intake_handler = IntakeHandler(service, events, settings)

    @app.on_sqs_message(queue=settings.intake_queue, batch_size=10, name="intake")
    def intake(event: Any) -> dict[str, Any]:
        return intake_handler.handle_batch(record.to_dict() for record in event)

    app.service = service  # type: ignore[attr-defined]
    app.sample_gpus = sample_gpus  # type: ignore[attr-defined]
    app.intake_handler = intake_handler  # type: ignore[attr-defined]
    app.batches = batches  # type: ignore[attr-defined]
    app.delivery = delivery  # type: ignore[attr-defined]
    app.reconciler = reconciler  # type: ignore[attr-defined]
    return app
