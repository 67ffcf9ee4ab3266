"""Simulator settings and fault switches (environment at start; POST /admin/faults later)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_KEY = "simulated-local-key"
WORKLOAD_TYPES = ("media:fast",)


class Faults(BaseModel):
    """What goes wrong on purpose. Counters count down as they fire."""

    model_config = ConfigDict(extra="forbid")

    launch_5xx: int = Field(0, ge=0, description="next N launches answer HTTP 503 (JSON error)")
    launch_html: int = Field(0, ge=0, description="next N launches answer HTTP 200 with a CDN-like HTML page")
    launch_odd_body: int = Field(0, ge=0, description="next N launches start an instance but answer 200 with a "
                                 "JSON body lacking 'workload' and 'node'")
    launch_delay: float = Field(0.0, ge=0, description="seconds a launch takes to answer (billing starts at once)")
    launch_delay_count: int | None = Field(None, ge=0, description="only the next N launches are slow (None: all)")
    stop_delay: float = Field(0.0, ge=0, description="seconds a stop takes to answer (the instance bills until then)")
    refuse_key: bool = Field(False, description="every control-plane call answers 403, whatever the key")
    node_init_seconds: float = Field(0.0, ge=0, description="a new node's health answers 503 for this long after its launch answered")
    node_die_after: float | None = Field(None, ge=0, description="new nodes stop answering this long after launch")
    node_hide_after: float | None = Field(None, ge=0, description="new nodes drop out of /workloads this long after launch")
    node: dict[str, Any] = Field(default_factory=dict, description="initial NodeState.faults of each new node")


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    api_key: str = Field(DEFAULT_API_KEY, validation_alias="C3_SIM_API_KEY")
    # Mount the node apps (infra.local.simulator.apps); off = bare nodes serving health only.
    apps: bool = Field(True, validation_alias="C3_SIM_APPS")
    expiry_check: float = Field(0.2, gt=0, validation_alias="C3_SIM_EXPIRY_CHECK")

    launch_5xx: int = Field(0, ge=0, validation_alias="C3_SIM_LAUNCH_5XX")
    launch_html: int = Field(0, ge=0, validation_alias="C3_SIM_LAUNCH_HTML")
    launch_odd_body: int = Field(0, ge=0, validation_alias="C3_SIM_LAUNCH_ODD_BODY")
    launch_delay: float = Field(0.0, ge=0, validation_alias="C3_SIM_LAUNCH_DELAY")
    launch_delay_count: int | None = Field(None, ge=0, validation_alias="C3_SIM_LAUNCH_DELAY_COUNT")
    stop_delay: float = Field(0.0, ge=0, validation_alias="C3_SIM_STOP_DELAY")
    refuse_key: bool = Field(False, validation_alias="C3_SIM_REFUSE_KEY")
    node_init_seconds: float = Field(0.0, ge=0, validation_alias="C3_SIM_NODE_INIT_SECONDS")
    node_die_after: float | None = Field(None, ge=0, validation_alias="C3_SIM_NODE_DIE_AFTER")
    node_hide_after: float | None = Field(None, ge=0, validation_alias="C3_SIM_NODE_HIDE_AFTER")

    def initial_faults(self) -> Faults:
        return Faults(**{name: getattr(self, name) for name in Faults.model_fields if name != "node"})
