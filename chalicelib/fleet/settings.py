"""Settings of the GPU fleet that the API's scheduled reaper needs as well as the worker
(the worker's GpuSettings extends them): the Comput3 control plane and the rules for
when an instance is nobody's to pay for any more. Every number an environment variable."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chalicelib.fleet.comput3 import DEFAULT_API_URL, Comput3Client


def _split(value: object) -> object:
    if isinstance(value, (int, float)):
        return (value,)
    if isinstance(value, str):
        return tuple(float(v) for v in value.split(",") if v.strip())
    return value


# "5,15,30" in the environment (not JSON).
Delays = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_split)]


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Comput3 control plane.
    c3_api_key: str | None = Field(None, validation_alias="C3_API_KEY")
    c3_api_url: str = Field(DEFAULT_API_URL, validation_alias="C3_API_URL")
    stop_retry_delays: Delays = Field((1, 3), validation_alias="C3_STOP_RETRY_DELAYS")
    request_timeout: float = Field(30.0, gt=0, validation_alias="C3_REQUEST_TIMEOUT")

    # When an instance is stopped (spec defaults).
    idle_timeout: float = Field(300.0, ge=0, validation_alias="GPU_IDLE_TIMEOUT")
    lifetime: int = Field(7200, ge=60, validation_alias="GPU_LIFETIME")
    refresh_after: float = Field(3600.0, gt=0, validation_alias="GPU_REFRESH_AFTER")
    # The pool (chalicelib/fleet/pool.py): idle instances beyond the jobs waiting and these
    # spares are stopped once idle GPU_SURPLUS_IDLE; the spares after GPU_IDLE_TIMEOUT.
    warm_spares: int = Field(1, ge=0, validation_alias="GPU_WARM_SPARES")
    surplus_idle: float = Field(30.0, ge=0, validation_alias="GPU_SURPLUS_IDLE")
    # How long an idle instance is kept (chalicelib/fleet/idle.py): "fixed" keeps the two
    # bounds above; "adaptive" keeps it only while the learned traffic says a job is expected
    # soon enough for waiting to cost less than a relaunch, each second a job waits for a
    # launch counted as GPU_WAIT_PRICE GPU seconds; never less than GPU_IDLE_FLOOR (against
    # flapping), never more than the bounds above.
    idle_policy: Literal["fixed", "adaptive"] = Field("fixed", validation_alias="GPU_IDLE_POLICY")
    wait_price: float = Field(2.0, ge=0, validation_alias="GPU_WAIT_PRICE")
    idle_floor: float = Field(15.0, ge=0, validation_alias="GPU_IDLE_FLOOR")
    # Liveness of owners: a job, launch or stop whose owner is silent this long is taken over.
    heartbeat_interval: float = Field(30.0, gt=0, validation_alias="GPU_HEARTBEAT_INTERVAL")
    owner_grace: float = Field(120.0, gt=0, validation_alias="GPU_OWNER_GRACE")
    # A workload running at Comput3 that no record knows (nor any launching intent) is stopped
    # by the reaper once this old: at most this plus a reap interval of unaccounted rent.
    unknown_grace: float = Field(180.0, gt=0, validation_alias="GPU_UNKNOWN_GRACE")

    @model_validator(mode="after")
    def _consistent(self) -> "FleetSettings":
        if self.refresh_after >= self.lifetime:
            raise ValueError("GPU_REFRESH_AFTER must be shorter than GPU_LIFETIME (the rental's expires)")
        if self.owner_grace <= self.heartbeat_interval:
            raise ValueError("GPU_OWNER_GRACE must exceed GPU_HEARTBEAT_INTERVAL, or live owners look silent")
        if any(d < 0 for d in self.stop_retry_delays):
            raise ValueError("C3_STOP_RETRY_DELAYS must not be negative")
        return self

    def client(self, **extra: object) -> Comput3Client:
        return Comput3Client(self.c3_api_url, self.c3_api_key or "", stop_retry_delays=self.stop_retry_delays,
                             timeout=self.request_timeout, **extra)  # type: ignore[arg-type]
