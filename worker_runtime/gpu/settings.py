"""GPU settings of the worker: the fleet's (chalicelib/fleet/settings.py) plus launching,
node URLs and health checks. Every number an environment variable."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator

from chalicelib.fleet.comput3 import Comput3Client
from chalicelib.fleet.settings import Delays, FleetSettings

from ..node import NodeUrls


class GpuSettings(FleetSettings):
    workload_type: str = Field("media:fast", validation_alias="C3_WORKLOAD_TYPE")
    launch_retry_delays: Delays = Field((5, 15, 30, 45, 60), validation_alias="C3_LAUNCH_RETRY_DELAYS")
    launch_timeout: float = Field(60.0, gt=0, validation_alias="C3_LAUNCH_TIMEOUT")

    # Where a node's apps live; "{node}" is the host name Comput3 returned.
    node_url: str = Field("https://{node}", validation_alias="C3_NODE_URL")
    comfyui_url: str = Field("https://ui-{node}", validation_alias="C3_COMFYUI_URL")
    ollama_url: str = Field("https://{node}/ollama", validation_alias="C3_OLLAMA_URL")

    # At most this many instances at once, across all workers (the registry's launch slots).
    max_gpus: int = Field(10, ge=1, le=1000, validation_alias="MAX_GPUS")
    # All slots taken: look again (for an idle instance or a free slot) this often.
    capacity_poll: float = Field(1.0, gt=0, validation_alias="GPU_CAPACITY_POLL")
    # A new node is polled for health this often until it answers, for up to boot_timeout.
    # 0.1 s: the job starts within 0.1 s of the boot, for ten tiny GETs a second to our own node.
    boot_poll: float = Field(0.1, gt=0, validation_alias="GPU_BOOT_POLL")
    boot_timeout: float = Field(600.0, gt=0, validation_alias="GPU_BOOT_TIMEOUT")
    health_interval: float = Field(15.0, gt=0, validation_alias="GPU_HEALTH_INTERVAL")
    health_attempts: int = Field(3, ge=1, validation_alias="GPU_HEALTH_ATTEMPTS")
    health_retry_delay: float = Field(2.0, ge=0, validation_alias="GPU_HEALTH_RETRY_DELAY")
    health_timeout: float = Field(10.0, gt=0, validation_alias="GPU_HEALTH_TIMEOUT")
    # A cancelled job's work the node cannot stop (a running Gradio call) keeps the instance
    # from other jobs until it ends; when it would last longer than this (or for an unknown
    # time), the instance is stopped instead (README: "Cancelled work on the node").
    cancelled_work_limit: float = Field(60.0, ge=0, validation_alias="GPU_CANCELLED_WORK_LIMIT")

    @model_validator(mode="after")
    def _launch_delays(self) -> "GpuSettings":
        if any(d < 0 for d in self.launch_retry_delays):
            raise ValueError("C3_LAUNCH_RETRY_DELAYS must not be negative")
        return self

    @property
    def node_urls(self) -> NodeUrls:
        return NodeUrls(node=self.node_url, comfyui=self.comfyui_url, ollama=self.ollama_url)

    def client(self, **extra: object) -> Comput3Client:
        return super().client(retry_delays=self.launch_retry_delays, launch_timeout=self.launch_timeout, **extra)


@lru_cache(maxsize=1)
def get_gpu_settings() -> GpuSettings:
    return GpuSettings()
