"""GPU settings: every number an environment variable with the spec's default."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..comput3 import DEFAULT_API_URL
from ..node import NodeUrls

# "5,15,30" in the environment (not JSON).
Delays = Annotated[tuple[float, ...], NoDecode]


class GpuSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Comput3 control plane.
    c3_api_key: str | None = Field(None, validation_alias="C3_API_KEY")
    c3_api_url: str = Field(DEFAULT_API_URL, validation_alias="C3_API_URL")
    workload_type: str = Field("media:fast", validation_alias="C3_WORKLOAD_TYPE")
    launch_retry_delays: Delays = Field((5, 15, 30, 45, 60), validation_alias="C3_LAUNCH_RETRY_DELAYS")
    stop_retry_delays: Delays = Field((1, 3), validation_alias="C3_STOP_RETRY_DELAYS")
    request_timeout: float = Field(30.0, gt=0, validation_alias="C3_REQUEST_TIMEOUT")
    launch_timeout: float = Field(60.0, gt=0, validation_alias="C3_LAUNCH_TIMEOUT")

    # Where a node's apps live; "{node}" is the host name Comput3 returned.
    node_url: str = Field("https://{node}", validation_alias="C3_NODE_URL")
    comfyui_url: str = Field("https://ui-{node}", validation_alias="C3_COMFYUI_URL")
    ollama_url: str = Field("https://{node}/ollama", validation_alias="C3_OLLAMA_URL")

    # The instance lifecycle (spec defaults).
    idle_timeout: float = Field(300.0, ge=0, validation_alias="GPU_IDLE_TIMEOUT")
    # At most this many instances at once, across all workers (the registry's launch slots).
    max_gpus: int = Field(10, ge=1, le=1000, validation_alias="MAX_GPUS")
    # All slots taken: look again (for an idle instance or a free slot) this often.
    capacity_poll: float = Field(1.0, gt=0, validation_alias="GPU_CAPACITY_POLL")
    # A new node is polled for health this often until it answers, for up to boot_timeout.
    boot_poll: float = Field(0.25, gt=0, validation_alias="GPU_BOOT_POLL")
    boot_timeout: float = Field(600.0, gt=0, validation_alias="GPU_BOOT_TIMEOUT")
    health_interval: float = Field(15.0, gt=0, validation_alias="GPU_HEALTH_INTERVAL")
    health_attempts: int = Field(3, ge=1, validation_alias="GPU_HEALTH_ATTEMPTS")
    health_retry_delay: float = Field(2.0, ge=0, validation_alias="GPU_HEALTH_RETRY_DELAY")
    health_timeout: float = Field(10.0, gt=0, validation_alias="GPU_HEALTH_TIMEOUT")
    lifetime: int = Field(7200, ge=60, validation_alias="GPU_LIFETIME")
    refresh_after: float = Field(3600.0, gt=0, validation_alias="GPU_REFRESH_AFTER")

    # The registry: liveness of owners and how often anyone looks for orphans.
    heartbeat_interval: float = Field(30.0, gt=0, validation_alias="GPU_HEARTBEAT_INTERVAL")
    owner_grace: float = Field(120.0, gt=0, validation_alias="GPU_OWNER_GRACE")
    reap_interval: float = Field(60.0, gt=0, validation_alias="GPU_REAP_INTERVAL")

    @field_validator("launch_retry_delays", "stop_retry_delays", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, (int, float)):
            return (value,)
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "GpuSettings":
        if self.refresh_after >= self.lifetime:
            raise ValueError("GPU_REFRESH_AFTER must be shorter than GPU_LIFETIME (the rental's expires)")
        if self.owner_grace <= self.heartbeat_interval:
            raise ValueError("GPU_OWNER_GRACE must exceed GPU_HEARTBEAT_INTERVAL, or live owners look silent")
        if any(d < 0 for d in self.launch_retry_delays + self.stop_retry_delays):
            raise ValueError("C3_LAUNCH_RETRY_DELAYS / C3_STOP_RETRY_DELAYS must not be negative")
        return self

    @property
    def node_urls(self) -> NodeUrls:
        return NodeUrls(node=self.node_url, comfyui=self.comfyui_url, ollama=self.ollama_url)


@lru_cache(maxsize=1)
def get_gpu_settings() -> GpuSettings:
    return GpuSettings()
