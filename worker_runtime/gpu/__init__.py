"""Comput3 GPU instances for the worker: settings, registry, manager."""

from __future__ import annotations

from chalicelib.context import Context

from ..comput3 import Comput3Client
from .manager import GpuError, GpuManager
from .registry import GpuRegistry
from .settings import GpuSettings
from .task import GpuTask

__all__ = ["GpuError", "GpuManager", "GpuSettings", "GpuTask", "build_gpu_manager"]


def build_gpu_manager(ctx: Context, worker_id: str, settings: GpuSettings | None = None) -> GpuManager:
    s = settings or GpuSettings()
    client = Comput3Client(s.c3_api_url, s.c3_api_key or "", retry_delays=s.launch_retry_delays,
                           stop_retry_delays=s.stop_retry_delays, timeout=s.request_timeout,
                           launch_timeout=s.launch_timeout)
    registry = GpuRegistry(ctx.dynamodb, ctx.settings.gpu_table, ctx.clock)
    return GpuManager(s, client, registry, worker_id, clock=ctx.clock)
