"""OpenAPI 3.1 document generated from the pydantic request models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from chalicelib.jobs.batches import MAX_ITEMS, BatchRequest
from chalicelib.jobs.models import PHASES, REQUEST_MODELS, RedeliverRequest, StatusUpdate
from chalicelib.jobs.queries import CURSOR_PATTERN

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


EDGE_429 = ("Over the edge's rate for this key, or for this address without a key (AWS WAF rules of the "
            "deployed stage: ApiTenantRateLimit, ApiAnonymousRateLimit, ApiAddressRateLimit per "
            "ApiRateWindowSeconds); see Retry-After")


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Missing or wrong API key", 404: "Unknown job",
            403: "The result link does not open this job, or the route needs an operator key",
            405: "Method not allowed on this route",
            409: "Conflict with the job's state", 413: "Body too large",
            415: "Content-Type is not application/json", 422: "Invalid fields",
            429: "The key has its cap of jobs in flight, or is over the edge's rate (see Retry-After)",
            503: "A backing AWS service is unavailable; nothing was accepted"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


# From a job's id to what can be done with it: submit -> status -> result -> update, retry
# (what stateful clients and testers such as schemathesis chain).
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
    for name, operation in (("GetStatus", "getStatus"), ("GetResult", "getResult"),
                            ("UpdateJob", "updateJob"), ("RetryJob", "retryJob"))
}


def _static(summary: str, media_type: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "security": [], "responses": {"200": {
        "description": summary, "content": {media_type: {"schema": {"type": "string"}}}}}}}


# The operators' page (chalicelib/api/ui.py): public static files; its data comes from the API.
UI_PATHS = {
    "/ui": _static("The operators' page: jobs, a job's detail and health, with the key entered in it",
                   "text/html"),
    "/ui/app.js": _static("The page's script", "text/javascript"),
    "/ui/app.css": _static("The page's style sheet", "text/css"),
}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    models = [(m, "validation") for m in (*REQUEST_MODELS.values(), StatusUpdate, BatchRequest, RedeliverRequest)]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR
    schemas["Submitted"] = {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string", "format": "uuid"},
                       "status": {"enum": ["queued", "running", "success", "failed", "cancelled", "timed_out"],
                                  "description": "queued, or the current state of a replayed submission"}},
    }
    schemas["JobStatus"] = {
        "type": "object",
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "running", "success", "failed", "cancelled", "timed_out"]},
            "error": {"type": "string"},
            "type": {"type": "string"},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "complete_by": {"type": "string", "format": "date-time"},
            "max_time": {"type": "integer"},
            "queue_position": {"type": "integer", "description": "queued jobs ahead of this one"},
            "queue_position_approximate": {"type": "boolean"},
            "retry_of": {"type": "string", "format": "uuid"},
            "priority": {"enum": ["high", "normal", "low"], "description": "the job's lane"},
            "batch_id": {"type": "string", "format": "uuid", "description": "the batch it came in"},
            "phase": {"enum": list(PHASES),
                      "description": "where the job is; absent once final and every webhook is settled"},
            "phases": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"},
                       "description": "when each phase of the current attempt was entered"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1,
                         "description": "the node's progress while rendering, where the node reports it"},
            "webhook": _ref("WebhookState"),
            "start_webhook": _ref("WebhookState"),
            "cost": _ref("Cost"),
            "params": {"type": "object", "description": "the job's parameters as submitted, defaults "
                                                        "filled in (GET /status only, not GET /jobs)"},
            "tenant": {"type": "string", "description": "operator keys only: the job's owner, the first 12 "
                                                         "hex digits of the sha256 of its key"},
        },
    }
    schemas["WebhookState"] = {"type": "object", "required": ["status", "attempts"], "properties": {
        "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer"},
        "last_error": {"type": "string"}}}
    schemas["JobList"] = {
        "type": "object", "required": ["jobs", "next_cursor", "scope"],
        "properties": {"jobs": {"type": "array", "items": _ref("JobStatus")},
                       "next_cursor": {"type": ["string", "null"]},
                       "scope": {"enum": ["own", "all"], "description": "all: an operator key's view of every "
                                                                        "tenant's jobs"}},
    }
    schemas["Retried"] = {
        "type": "object", "required": ["id", "status", "retry_of"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"const": "queued"},
                       "retry_of": {"type": "string", "format": "uuid"}},
    }
    schemas["Cost"] = {
        "type": "object", "description": "A finished job's receipt (README, \"What a job cost\")",
        "required": ["queued_seconds", "cold_start", "cold_start_seconds", "gpu_seconds", "billed_gpu_seconds",
                     "instance_type", "usd"],
        "properties": {
            "queued_seconds": {"type": "number", "description": "from submission to the first start"},
            "cold_start": {"type": "boolean", "description": "it waited for a GPU launch to boot"},
            "cold_start_seconds": {"type": "number", "description": "how long it waited for that launch and boot"},
            "gpu_seconds": {"type": "number", "description": "its own work on the instance"},
            "billed_gpu_seconds": {"type": "number", "description": "its work plus the boot of the launch it caused"},
            "instance_type": {"type": ["string", "null"], "description": "null: it used no GPU"},
            "usd": {"type": ["number", "null"], "description": "billed_gpu_seconds at GPU_PRICE_PER_HOUR "
                                                                "(null when no price is configured)"},
        },
    }
    schemas["UsageLine"] = {"type": "object", "required": ["day", "type", "jobs", "gpu_seconds",
                                                           "billed_gpu_seconds", "usd"],
                            "properties": {"day": {"type": "string", "format": "date"}, "type": {"type": "string"},
                                           "jobs": {"type": "integer"}, "gpu_seconds": {"type": "number"},
                                           "billed_gpu_seconds": {"type": "number"}, "usd": {"type": "number"}}}
    schemas["Usage"] = {"type": "object", "required": ["from", "to", "usage", "total"], "properties": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "next_from": {"type": "string", "format": "date", "description": "the range goes on: ask again from here"},
        "usage": {"type": "array", "items": _ref("UsageLine")},
        "total": {"type": "object", "properties": {"jobs": {"type": "integer"}, "gpu_seconds": {"type": "number"},
                                                   "billed_gpu_seconds": {"type": "number"},
                                                   "usd": {"type": "number"}}}}}
    schemas["DeliveryAttempt"] = {
        "type": "object", "required": ["at", "event", "attempt", "webhook_id", "seconds", "outcome"],
        "properties": {
            "at": {"type": "string", "format": "date-time", "description": "when the answer (or error) came"},
            "event": {"enum": ["start", "completed"]},
            "attempt": {"type": "integer", "minimum": 1, "description": "the hook's attempt number, across redeliveries"},
            "webhook_id": {"type": "string", "description": "the webhook-id header sent (the same for every "
                                                            "attempt of one event)"},
            "seconds": {"type": "number", "description": "latency: from the request to its answer or error"},
            "status": {"type": "integer", "description": "the receiver's HTTP status"},
            "error": {"enum": ["timeout", "connection_failed", "address_refused"],
                      "description": "why no HTTP answer came (as coarse as webhook.last_error)"},
            "outcome": {"enum": ["delivered", "retrying", "failed", "gone"]},
            "next_attempt_at": {"type": "string", "format": "date-time", "description": "when retrying"},
        },
    }
    schemas["DeliveryList"] = {"type": "object", "required": ["id", "deliveries"], "properties": {
        "id": {"type": "string", "format": "uuid"},
        "deliveries": {"type": "array", "items": _ref("DeliveryAttempt")}}}
    schemas["Redelivery"] = {"type": "object", "required": ["id", "event", "status", "webhook_id"], "properties": {
        "id": {"type": "string", "format": "uuid"}, "event": {"enum": ["start", "completed"]},
        "status": {"const": "pending"}, "webhook_id": {"type": "string"}}}
    schemas["Health"] = {"oneOf": [
        {"type": "object", "required": ["status", "queue", "jobs", "workers", "gpus"],
         "properties": {"status": {"const": "ok"}, "queue": {"type": "object"},
                        "jobs": {"type": "object"}, "workers": {"type": "object"},
                        "gpus": {"type": "object"}}},
        {"type": "object", "required": ["status", "service"], "additionalProperties": False,
         "description": "liveness only: no valid key was sent (API keys configured)",
         "properties": {"status": {"const": "ok"}, "service": {"const": "c3-render"}}},
    ]}
    quantiles = {"type": "object", "required": ["p50", "p95"],
                 "properties": {"p50": {"type": ["number", "null"]}, "p95": {"type": ["number", "null"]}}}
    outcomes = {"type": "object", "required": ["success", "failed", "cancelled", "timed_out"],
                "properties": {o: {"type": "integer"} for o in ("success", "failed", "cancelled", "timed_out")}}
    gpu = {"type": "object", "required": ["billed_seconds", "busy_seconds"],
           "properties": {"billed_seconds": {"type": "number"}, "busy_seconds": {"type": "number"}}}
    schemas["Stats"] = {
        "type": "object", "required": ["minutes", "hour"],
        "properties": {
            "minutes": {"type": "array", "items": {
                "type": "object", "required": ["t", "finished", "queue_wait", "run_time", "gpu"],
                "properties": {"t": {"type": "string", "format": "date-time"}, "finished": outcomes,
                               "queue_wait": quantiles, "run_time": quantiles, "gpu": gpu}}},
            "hour": {"type": "object", "required": ["finished", "queue_wait", "run_time", "gpu"],
                     "properties": {"finished": outcomes, "queue_wait": quantiles, "run_time": quantiles,
                                    "gpu": gpu}},
        },
    }
    listed = {"type": "object", "required": ["count", "items"],
              "properties": {"count": {"type": "integer"}, "items": {"type": "array", "items": {"type": "object"}}}}
    schemas["Incidents"] = {"type": "object", "required": ["dead_letters", "intake_rejections"],
                            "properties": {"dead_letters": listed, "intake_rejections": listed}}
    schemas["BatchItemAnswer"] = {
        "type": "object", "required": ["index"],
        "properties": {"index": {"type": "integer", "minimum": 0, "maximum": MAX_ITEMS - 1},
                       "id": {"type": "string", "format": "uuid", "description": "the job, when accepted"},
                       "status": {"enum": ["queued", "running", "success", "failed", "cancelled", "timed_out"],
                                  "description": "the job's status, when accepted"},
                       "error": {"type": "string", "description": "why the item was refused"},
                       "code": {"enum": [409, 422, 429], "description": "the HTTP status its route would answer"},
                       "details": _ERROR["properties"]["details"]}}
    schemas["BatchSubmitted"] = {
        "type": "object", "required": ["id", "accepted", "rejected", "items"],
        "properties": {"id": {"type": ["string", "null"], "format": "uuid",
                              "description": "null when no item was accepted (no batch was created)"},
                       "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                       "items": {"type": "array", "items": _ref("BatchItemAnswer"),
                                 "description": "one answer per item, in order"}}}
    schemas["Batch"] = {
        "type": "object", "required": ["id", "created_at", "total", "counts", "completed", "jobs"],
        "properties": {"id": {"type": "string", "format": "uuid"},
                       "created_at": {"type": "string", "format": "date-time"},
                       "completed_at": {"type": "string", "format": "date-time"},
                       "total": {"type": "integer"}, "completed": {"type": "boolean"},
                       "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                                  "description": "members by status (removed: its data was removed)"},
                       "jobs": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                       "webhook": _ref("WebhookState")}}
    schemas["Result"] = {
        "oneOf": [
            {"type": "object", "required": ["result_url"], "additionalProperties": False,
             "properties": {"result_url": {"type": "string"},
                            "result_link": {"type": "string", "description": "lasts PRESIGN_EXPIRES"}}},
            {"type": "object", "required": ["text"], "additionalProperties": False,
             "properties": {"text": {"type": "string"}}},
        ]
    }
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    prefer = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "wait=N (RFC 7240): answer once the job is final, or after N seconds "
                             "(Preference-Applied: wait=N says it waited). N is clamped to 25 (API "
                             "Gateway's limit; Preference-Applied names the clamped value); wait=0 is "
                             "ignored (the plain answer); other preferences are ignored. N that is not "
                             "1-10 ASCII digits is a 400 naming Prefer, before anything is written."}
    open_route = {"security": []}
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "Up", "responses": {"200": {"description": "Service is up"}}, **open_route}},
        **UI_PATHS,
        "/health": {"get": {"summary": "Liveness; with a key: queue, jobs, workers and GPU instances",
                            "security": [{}, {"renderKey": []}, {"bearer": []}],
                            "responses": {"200": _json(_ref("Health"), "Health")}}},
        "/incidents": {"get": {"summary": "Operator keys: the last hour's dead letters and intake rejections",
                               "responses": {"200": _json(_ref("Incidents"), "Incidents"), **_errors(401, 403)}}},
        "/stats": {"get": {"summary": "The last hour a minute at a time: jobs finished by outcome, queue "
                                      "wait and run time p50/p95, GPU billed and busy seconds",
                           "responses": {"200": _json(_ref("Stats"), "Stats"), **_errors(401)}}},
        "/jobs": {"get": {"summary": "The key's jobs, newest first", "parameters": [
            {"name": "status", "in": "query", "schema": {"enum": ["queued", "running", "success", "failed",
                                                                    "cancelled", "timed_out"]}},
            {"name": "type", "in": "query", "schema": {"enum": [t.value for t in REQUEST_MODELS]}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
            {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": CURSOR_PATTERN}}],
            "responses": {"200": _json(_ref("JobList"), "A page of jobs"), **_errors(400, 401)}}},
        "/jobs/{id}/retry": {"post": {"summary": "Submit a failed, timed-out or cancelled job again",
                                      "operationId": "retryJob",
                                      "parameters": [job_id], "responses": {
                                          "200": _json(_ref("Retried"), "The new job"),
                                          **_errors(400, 401, 404, 409, 415, 429)}}},
        "/usage": {"get": {"summary": "The key's jobs, GPU seconds and USD by day (UTC) and job type", "parameters": [
            {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"},
             "description": "first day, YYYY-MM-DD (default: 29 days before to)"},
            {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"},
             "description": "last day, YYYY-MM-DD (default: today); a from after it is an empty range. "
                            "One answer covers 366 days; next_from continues"}],
            "responses": {"200": _json(_ref("Usage"), "The key's usage"), **_errors(400, 401)}}},
        "/jobs/{id}/deliveries": {"get": {"summary": "Every webhook attempt of the job, oldest first",
                                          "operationId": "getDeliveries", "parameters": [job_id], "responses": {
                                              "200": _json(_ref("DeliveryList"), "The job's delivery log"),
                                              **_errors(400, 401, 404)}}},
        "/jobs/{id}/redeliver": {"post": {
            "summary": "Queue one more delivery of a final job's webhook (same webhook-id)",
            "operationId": "redeliver", "parameters": [job_id],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("RedeliverRequest")}}},
            "responses": {"202": _json(_ref("Redelivery"), "The delivery is queued"),
                          **_errors(400, 401, 404, 409, 413, 415, 422)}}},
        "/results/{id}": {"get": {"summary": "A durable result link: 302 to a fresh presigned URL",
                                  **open_route, "parameters": [
                                      job_id, {"name": "expires", "in": "query", "required": True,
                                               "schema": {"type": "integer", "minimum": 0,
                                                          "maximum": 999_999_999_999},
                                               "description": "ASCII digits only (else a 400)"},
                                      {"name": "token", "in": "query", "required": True,
                                       "schema": {"type": "string"}}],
                                  "responses": {"302": {"description": "Location: the result"},
                                                **_errors(400, 403, 404)}}},
    }
    for job_type, model in REQUEST_MODELS.items():
        paths[f"/{job_type.value}"] = {
            "post": {
                "summary": f"Submit a {job_type.value} job",
                "operationId": f"submit_{job_type.value}",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
                    prefer,
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model.__name__)}}},
                "responses": {"200": {**_json({"anyOf": [_ref("Submitted"), _ref("JobStatus")]},
                                              "Job accepted (with Prefer: wait, its status view)"),
                                      "links": JOB_LINKS},
                              **_errors(400, 401, 409, 413, 415, 422, 429, 503)},
            }
        }
    paths["/batch"] = {"post": {
        "summary": f"Submit up to {MAX_ITEMS} jobs of any types; each item is answered on its own",
        "operationId": "submitBatch",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "the same key and body return the same batch and jobs"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchRequest")}}},
        "responses": {"200": _json(_ref("BatchSubmitted"), "Each item's job id or error, in order"),
                      **_errors(400, 401, 409, 413, 415, 422, 503)}}}
    paths["/batch/{id}"] = {"get": {"summary": "A batch: its members' counts by status and ids",
                                    "operationId": "getBatch", "parameters": [job_id],
                                    "responses": {"200": _json(_ref("Batch"), "The batch"),
                                                  **_errors(400, 401, 404)}}}
    paths["/status/{id}"] = {"get": {"summary": "Job status", "operationId": "getStatus",
                                     "parameters": [job_id, prefer],
                                     "responses": {"200": _json(_ref("JobStatus"), "Job status"),
                                                   **_errors(400, 401, 404)}}}
    paths["/job/{id}"] = {"post": {
        "summary": "Mark a job timed_out, cancelled or failed", "operationId": "updateJob", "parameters": [job_id],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("StatusUpdate")}}},
        "responses": {"200": _json({"type": "object", "properties": {"message": {"type": "string"}}}, "Updated"),
                      **_errors(400, 401, 404, 409, 413, 415, 422)}}}
    paths["/result/{id}"] = {"get": {"summary": "Job result", "operationId": "getResult", "parameters": [job_id],
                                     "responses": {"200": _json(_ref("Result"), "Result"),
                                                   **_errors(400, 401, 404, 409)}}}
    for operations in paths.values():  # the edge (WAF on AWS) may refuse any request over its rate
        for operation in operations.values():
            operation["responses"].setdefault("429", _json(_ref("Error"), EDGE_429))
    return {
        "openapi": "3.1.0",
        "info": {"title": "c3-render", "version": "1.0.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "renderKey": {"type": "apiKey", "in": "header", "name": "X-C3-RENDER-KEY",
                              "description": "sent once: a repeated X-C3-RENDER-KEY (or Authorization) "
                                             "header is a 400"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"renderKey": []}, {"bearer": []}],
        "paths": paths,
    }
