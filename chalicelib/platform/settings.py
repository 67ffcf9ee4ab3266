"""Typed settings, read once from the environment.

AWS endpoints are deliberately absent: boto3 reads ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` itself, so the same code runs on moto, LocalStack
and AWS unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chalicelib.platform.retry_schedule import RetrySchedule


class EgressSettings(BaseSettings):
    """The egress policy's switch (chalicelib/platform/egress.py), shared by the API, the worker
    and the render tasks."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Local mode: user URLs and webhooks may reach 127.0.0.1 / private networks
    # (make run, tests). Off, they are refused at submit, at every hop and on connect.
    allow_private_urls: bool = Field(False, validation_alias="ALLOW_PRIVATE_URLS")


class Settings(EgressSettings):
    aws_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    jobs_table: str = Field("c3-render-jobs", validation_alias="JOBS_TABLE")
    gpu_table: str = Field("c3-render-gpus", validation_alias="GPU_TABLE")
    # Per-minute counters for the operators' plots (chalicelib/jobs/stats.py, GET /stats).
    stats_table: str = Field("c3-render-stats", validation_alias="STATS_TABLE")
    jobs_queue: str = Field("c3-render-jobs", validation_alias="JOBS_QUEUE")
    jobs_dlq: str = Field("c3-render-jobs-dlq", validation_alias="JOBS_DLQ")
    # The priority lanes (chalicelib/jobs/lanes.py): JOBS_QUEUE is the normal lane; the high and
    # low lanes are queues of their own (unset: JOBS_QUEUE's name + "-high" / "-low"), each
    # redriving to JOBS_DLQ.
    jobs_queue_high: str | None = Field(None, validation_alias="JOBS_QUEUE_HIGH")
    jobs_queue_low: str | None = Field(None, validation_alias="JOBS_QUEUE_LOW")
    # A low job queued this long is served as normal: a copy of its message, sent delayed by
    # this much at submit, waits in the normal lane (SQS delays up to 900 s).
    low_priority_max_wait: int = Field(600, ge=1, le=900, validation_alias="LOW_PRIORITY_MAX_WAIT")
    intake_queue: str = Field("c3-render-intake", validation_alias="INTAKE_QUEUE")
    events_queue: str = Field("c3-render-events", validation_alias="EVENTS_QUEUE")
    # Final-state deliveries (webhook + job event), one message per terminal job.
    webhooks_queue: str = Field("c3-render-webhooks", validation_alias="WEBHOOKS_QUEUE")
    results_bucket: str = Field("c3-render-results", validation_alias="RESULTS_BUCKET")
    # Comma-separated list; empty means the API is open (local development).
    api_keys: str = Field("", validation_alias="C3_RENDER_API_KEY")
    # Comma-separated operator keys: every tenant's jobs, dead letters and intake rejections,
    # and cancel/retry on any job (the operators' page). Stored in SSM like the API keys.
    operator_keys: str = Field("", validation_alias="C3_RENDER_OPERATOR_KEYS")

    default_max_time: int = Field(1200, validation_alias="DEFAULT_MAX_TIME")
    default_complete_in: int = Field(3600, validation_alias="DEFAULT_COMPLETE_IN")
    job_ttl_days: int = Field(30, ge=1, validation_alias="JOB_TTL_DAYS")
    max_body_bytes: int = Field(256 * 1024, ge=1024, validation_alias="MAX_BODY_BYTES")
    # Presigned result URLs are signed for this endpoint when set (e.g. the
    # host name clients use, where it differs from the worker's internal one).
    s3_public_endpoint: str | None = Field(None, validation_alias="S3_PUBLIC_ENDPOINT")
    presign_expires: int = Field(604800, ge=1, le=604800, validation_alias="PRESIGN_EXPIRES")

    webhook_attempts: int = Field(5, ge=1, validation_alias="WEBHOOK_ATTEMPTS")
    webhook_interval: float = Field(5.0, ge=0, validation_alias="WEBHOOK_INTERVAL")
    webhook_timeout: float = Field(10.0, gt=0, validation_alias="WEBHOOK_TIMEOUT")
    webhook_secret: str | None = Field(None, validation_alias="WEBHOOK_SECRET")
    # When a refused webhook is tried again (chalicelib/platform/retry_schedule.py): "seed"
    # (WEBHOOK_ATTEMPTS attempts WEBHOOK_INTERVAL apart), "standard" (Standard Webhooks'
    # schedule, over about three days) or comma-separated delays in seconds.
    webhook_schedule: str = Field("seed", validation_alias="WEBHOOK_SCHEDULE")

    @field_validator("webhook_schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        RetrySchedule.parse(value, 2, 1.0)  # raises naming the rule
        return value

    # The outbox: how long a job may sit queued with no message taken, or running
    # past its lease, or finished with its notification undelivered, before the
    # reconciler re-sends its message. Re-sends back off up to outbox_max_backoff.
    outbox_grace: float = Field(30.0, gt=0, validation_alias="OUTBOX_GRACE")
    outbox_max_backoff: float = Field(900.0, gt=0, validation_alias="OUTBOX_MAX_BACKOFF")
    # A queued job whose message was sent is not missing a message: it waits in the
    # queue until a worker takes it. It is re-sent only when that message could have
    # outlived the jobs queue's retention (4 days): every OUTBOX_QUEUED_RESEND seconds
    # of its age. A backlog is not flooded with copies (see chalicelib/outbox.py).
    outbox_queued_resend: float = Field(86400.0, gt=0, le=259200, validation_alias="OUTBOX_QUEUED_RESEND")
    # A job claimed this many times (each claim after a worker died or lost it) fails.
    max_attempts: int = Field(5, ge=1, validation_alias="MAX_ATTEMPTS")

    # The API's public base URL (result links in webhooks); unset: derived from each request.
    public_api_url: str | None = Field(None, validation_alias="PUBLIC_API_URL")
    # Signs result links (GET /results/{id}); its own secret (every webhook receiver holds
    # WEBHOOK_SECRET, so it must never sign links); unset: no result links.
    result_link_secret: str | None = Field(None, validation_alias="RESULT_LINK_SECRET")
    # Fair use: queued + running jobs one key may have (429 above); 0 = no cap. The AWS
    # template sets 100 (one small indexed count per submission there; moto scans for it).
    max_in_flight_per_key: int = Field(0, ge=0, validation_alias="MAX_IN_FLIGHT_PER_KEY")
    # Requests one key may hold open at once with ``Prefer: wait`` (each holds a Lambda);
    # over it a request answers at once, without Preference-Applied. 0 = no bound.
    max_wait_holds_per_key: int = Field(2, ge=0, validation_alias="MAX_WAIT_HOLDS_PER_KEY")

    # GET /health computes its details at most once per this many seconds per process
    # (its index reads are bounded however often it is called).
    health_cache_seconds: float = Field(5.0, ge=0, validation_alias="HEALTH_CACHE_SECONDS")

    # What a GPU hour costs, in USD, per instance type: "1.2" (every type) or
    # "media:fast=1.2,media:slow=2.5" (a bare number is the default for the others). The
    # Comput3 launch answer carries no price; empty: costs are shown in seconds, usd null.
    gpu_price_per_hour: str = Field("", validation_alias="GPU_PRICE_PER_HOUR")

    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")

    @field_validator("gpu_price_per_hour")
    @classmethod
    def _readable_prices(cls, value: str) -> str:
        parse_prices(value)  # raises naming the rule
        return value

    def price_per_hour(self, instance_type: str | None) -> float | None:
        """USD per hour of ``instance_type`` (GPU_PRICE_PER_HOUR), None when not configured."""
        prices = parse_prices(self.gpu_price_per_hour)
        return prices.get(instance_type or "", prices.get(""))

    @property
    def retry_schedule(self) -> RetrySchedule:
        return RetrySchedule.parse(self.webhook_schedule, self.webhook_attempts, self.webhook_interval)

    @property
    def lane_queues(self) -> dict[str, str]:
        """Queue name (or URL) of each lane, highest first."""
        return {"high": self.jobs_queue_high or f"{self.jobs_queue}-high", "normal": self.jobs_queue,
                "low": self.jobs_queue_low or f"{self.jobs_queue}-low"}

    @property
    def link_secret(self) -> str | None:
        return self.result_link_secret or None

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def operator_key_list(self) -> list[str]:
        return [k.strip() for k in self.operator_keys.split(",") if k.strip()]


def parse_prices(spec: str) -> dict[str, float]:
    """GPU_PRICE_PER_HOUR as {instance type: USD per hour}; "" is the default type."""
    prices: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, price = part.rpartition("=")
        try:
            value = float(price)
        except ValueError:
            raise ValueError(f"GPU_PRICE_PER_HOUR: {part!r} must be a price or TYPE=PRICE (USD per hour)") from None
        if not 0 <= value < 10_000:
            raise ValueError(f"GPU_PRICE_PER_HOUR: {part!r} must be a price from 0 to 10000 USD per hour")
        prices[name.strip()] = value
    return prices


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
