"""A rented GPU node as the task modules see it: where its apps live and the key.

URL patterns are configurable so the same client code talks to a real Comput3 node
(``https://{node}``, ComfyUI on ``https://ui-{node}``) or to the local simulator over
plain HTTP on 127.0.0.1 (``http://{node}``, ``http://{node}/comfyui``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class NodeUrls(BaseModel):
    model_config = ConfigDict(frozen=True)

    node: str = Field("https://{node}", description="Base of the node: health at /, CSM at /csm/, Whisper at /whisper/")
    comfyui: str = Field("https://ui-{node}", description="ComfyUI REST API base")
    ollama: str = Field("https://{node}/ollama", description="Ollama API base (POST {base}/api/generate)")


@dataclass(frozen=True)
class Node:
    workload: str  # Comput3 workload id
    name: str  # the node host name Comput3 returned
    api_key: str  # sent as X-C3-API-KEY to every node app
    urls: NodeUrls

    @property
    def base_url(self) -> str:
        return self.urls.node.format(node=self.name).rstrip("/")

    @property
    def csm_url(self) -> str:
        return f"{self.base_url}/csm/"

    @property
    def whisper_url(self) -> str:
        return f"{self.base_url}/whisper/"

    @property
    def comfyui_url(self) -> str:
        return self.urls.comfyui.format(node=self.name).rstrip("/")

    @property
    def ollama_url(self) -> str:
        return self.urls.ollama.format(node=self.name).rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        return {"X-C3-API-KEY": self.api_key}
