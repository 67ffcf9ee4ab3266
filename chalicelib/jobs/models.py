"""Request models (the seed's parameter tables), job states and their transitions."""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from chalicelib.platform.egress import literal_address_problem
from chalicelib.platform.errors import UnprocessableRequest
from chalicelib.platform.settings import get_settings

MAX_URL_LENGTH = 2048
# Which webhooks a job sends to its notify_url: "start" (first claim) and/or "completed".
WEBHOOK_EVENTS = ("start", "completed")
DEFAULT_WEBHOOK_EVENTS = ("completed",)
# Where a job is (GET /status "phase"): queued, the worker's phases while running
# (worker_runtime/phases.py), then "delivering" while a final job's webhooks are pending.
PHASES = ("queued", "downloading", "waiting_for_gpu", "waiting_for_node", "launching_gpu", "rendering", "uploading",
          "delivering")
MAX_TEXT_LENGTH = 20_000


class FieldRuleError(ValueError):
    """A cross-field rule broken; carries the field to name in the error details."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# What a user URL must look like, checked here and documented as the OpenAPI pattern, so the
# document describes exactly what is accepted: http(s), a host (name, IPv4 or [IPv6]), an
# optional port, no user info, no white space.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)(:[0-9]*)?([/?#]\S*)?$"


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain white space")
    if not re.fullmatch(URL_PATTERN, value):
        raise ValueError("must be an absolute http(s) URL with a host and no user info")
    # Host names are not resolved here: the worker checks them at every hop and connect.
    problem = None if get_settings().allow_private_urls else literal_address_problem(value)
    if problem:
        raise ValueError(f"must not point at a non-public address: {problem} "
                         "(allowed only with ALLOW_PRIVATE_URLS=true)")
    return value


HttpUrlStr = Annotated[
    StrictStr, Field(max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri", "pattern": URL_PATTERN}),
    AfterValidator(_check_http_url),
]
StrictFloat = Annotated[float, Field(strict=True)]


def _integral(value: Any) -> Any:
    """JSON has one number type: 63.0 is the integer 63 (JSON Schema agrees), 63.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A JSON integer: 63 or 63.0, never "63", 63.5 or true.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


class JobType(str, Enum):
    CSM = "csm"
    WHISPER = "whisper"
    PORTRAIT = "portrait"
    ANALYZE = "analyze"

    @property
    def is_media(self) -> bool:
        return self in (JobType.CSM, JobType.PORTRAIT)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

# The declared state machine. running -> running is a takeover of a job whose
# lease lapsed; running -> queued is a worker releasing a job on shutdown.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.TIMED_OUT, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.QUEUED,
            JobStatus.SUCCESS,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
        }
    ),
}

# States a client may set through POST /job/{id}.
CLIENT_STATES = (JobStatus.TIMED_OUT, JobStatus.CANCELLED, JobStatus.FAILED)


def sources_of(target: JobStatus) -> list[JobStatus]:
    """Every state from which ``target`` may be reached."""
    return [src for src, dests in TRANSITIONS.items() if target in dests]


class _Request(BaseModel):
    """Fields every job type shares; unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")

    notify_url: HttpUrlStr | None = Field(
        None, description="Webhook URL that receives the job's final state."
    )
    webhook_events_filter: list[Literal["start", "completed"]] | None = Field(
        None, min_length=1, max_length=len(WEBHOOK_EVENTS),
        description='Which webhooks notify_url receives: "start" (the job began running) and/or '
                    '"completed" (its final state). Default ["completed"].',
    )
    max_time: JsonInt = Field(
        default_factory=lambda: get_settings().default_max_time,
        ge=60,
        le=7200,
        description="Maximum processing time in seconds, from start (default 1200).",
    )
    complete_in: JsonInt = Field(
        default_factory=lambda: get_settings().default_complete_in,
        ge=60,
        le=86400,
        description="Seconds from submission by which the job must finish (default 3600).",
    )
    priority: Literal["high", "normal", "low"] = Field(
        "normal",
        description="The job's lane: workers take high before normal before low; a low job "
                    "queued LOW_PRIORITY_MAX_WAIT seconds is served as normal.",
    )


class CsmRequest(_Request):
    # The cross-field rules, as JSON Schema for the OpenAPI document: exactly one text source;
    # the clone inputs with voice "clone" and only then.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"properties": {"text": {"type": "string"}}, "required": ["text"]},
                  {"properties": {"monologue": {"type": "array"}}, "required": ["monologue"]}],
        "if": {"properties": {"voice": {"const": "clone"}}, "required": ["voice"]},
        "then": {"properties": {"reference_audio_url": {"type": "string"}, "reference_text": {"type": "string"}},
                 "required": ["reference_audio_url", "reference_text"]},
        "else": {"properties": {"reference_audio_url": {"type": "null"}, "reference_text": {"type": "null"}}},
    })

    text: StrictStr | None = Field(None, min_length=1, max_length=MAX_TEXT_LENGTH)
    monologue: list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_LENGTH)]] | None = (
        Field(None, min_length=1, max_length=500)
    )
    voice: Literal["random", "conversational_a", "conversational_b", "clone"] = "random"
    reference_audio_url: HttpUrlStr | None = None
    reference_text: StrictStr | None = Field(None, min_length=1, max_length=MAX_TEXT_LENGTH)
    temperature: StrictFloat = Field(0.9, ge=0.0, le=2.0)
    topk: JsonInt = Field(50, ge=1, le=1000)
    max_audio_length: JsonInt = Field(10000, ge=1, le=600_000, description="milliseconds")
    pause_duration: JsonInt = Field(150, ge=0, le=60_000, description="milliseconds")

    @model_validator(mode="after")
    def _one_text_source_and_clone_inputs(self) -> "CsmRequest":
        if (self.text is None) == (self.monologue is None):
            raise FieldRuleError("text", "provide exactly one of 'text' or 'monologue'")
        if self.voice == "clone":
            missing = [
                name
                for name in ("reference_audio_url", "reference_text")
                if getattr(self, name) is None
            ]
            if missing:
                raise FieldRuleError(missing[0], f"voice 'clone' requires {' and '.join(missing)}")
        elif self.reference_audio_url is not None or self.reference_text is not None:
            raise FieldRuleError(
                "voice", "reference_audio_url and reference_text are only used with voice 'clone'"
            )
        return self

    def sentences(self) -> list[str]:
        return list(self.monologue) if self.monologue is not None else [self.text or ""]


class WhisperRequest(_Request):
    audio_url: HttpUrlStr
    model: Literal["tiny", "base", "small", "medium", "large", "large-v2", "large-v3"] = "medium"
    task: Literal["transcribe", "translate"] = "transcribe"
    language: StrictStr = Field("", max_length=32, pattern=r"^[A-Za-z_-]*$")


class PortraitRequest(_Request):
    image_url: HttpUrlStr
    audio_url: HttpUrlStr


class AnalyzeRequest(_Request):
    image_url: HttpUrlStr


REQUEST_MODELS: dict[JobType, type[_Request]] = {
    JobType.CSM: CsmRequest,
    JobType.WHISPER: WhisperRequest,
    JobType.PORTRAIT: PortraitRequest,
    JobType.ANALYZE: AnalyzeRequest,
}


class StatusUpdate(BaseModel):
    """Body of POST /job/{id}."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["timed_out", "cancelled", "failed"]
    error: StrictStr | None = Field(None, max_length=4000)
    remove_data: StrictBool = Field(
        False, description="Delete the record and every result object, also of a job already finished."
    )


class RedeliverRequest(BaseModel):
    """Body of POST /jobs/{id}/redeliver (optional: the final webhook by default)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["completed", "start"] = Field(
        "completed", description="completed: the final webhook; start: the start webhook")


# Every name a bad-input error may blame: the request models' fields plus the headers,
# query parameters and intake fields the API checks. The BadInputRejections metric's
# "field" dimension keeps to these (anything else counts as "other").
KNOWN_FIELDS: frozenset[str] = frozenset(
    {name for model in (*REQUEST_MODELS.values(), StatusUpdate, RedeliverRequest) for name in model.model_fields}
    | {"body", "params", "id", "type", "status", "limit", "cursor", "token", "method", "Content-Type",
       "Prefer", "Idempotency-Key", "X-C3-RENDER-KEY", "idempotency_key", "reply_to", "from", "to"}
)


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "body"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldRuleError):
            field = cause.field
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        details.append({"field": field, "message": message})
    return details


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` or raise UnprocessableRequest naming each bad field."""
    if not isinstance(data, dict):
        raise UnprocessableRequest(
            "Request body must be a JSON object",
            [{"field": "body", "message": "must be a JSON object"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UnprocessableRequest("Invalid request", validation_details(exc)) from exc


def parse_job_request(job_type: JobType, data: Any) -> _Request:
    return parse_model(REQUEST_MODELS[job_type], data)
