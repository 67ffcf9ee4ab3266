"""Settings of the render tasks: downloads, media limits and the node apps' knobs.

Read once from the environment (``TaskSettings()``); every number has the default
the spec or the protocols name."""

from __future__ import annotations

from pydantic import Field

from chalicelib.platform.settings import EgressSettings

DEFAULT_ANALYZE_PROMPT = (
    "Describe this image in detail: the main subjects, their appearance and actions, "
    "the setting, colours and lighting, and any visible text."
)


class TaskSettings(EgressSettings):
    """Also carries ``allow_private_urls`` (ALLOW_PRIVATE_URLS) for the downloader."""

    # -- downloads of user URLs (image_url, audio_url, reference_audio_url) --
    max_download_bytes: int = Field(200 * 1024 * 1024, ge=1, validation_alias="MAX_DOWNLOAD_BYTES")
    download_timeout: float = Field(120.0, gt=0, validation_alias="DOWNLOAD_TIMEOUT",
                                    description="Whole download, connect to last byte (seconds)")
    download_max_redirects: int = Field(5, ge=0, validation_alias="DOWNLOAD_MAX_REDIRECTS")

    # -- media preprocessing --
    max_image_side: int = Field(2048, ge=64, validation_alias="MAX_IMAGE_SIDE",
                                description="Images larger on a side are scaled down first")
    max_image_pixels: int = Field(40_000_000, ge=1, validation_alias="MAX_IMAGE_PIXELS",
                                  description="Images claiming more pixels (read from the header) are "
                                              "refused before they are decoded")
    portrait_max_width: int = Field(1280, ge=64, validation_alias="PORTRAIT_MAX_WIDTH")
    portrait_max_height: int = Field(720, ge=64, validation_alias="PORTRAIT_MAX_HEIGHT")

    # -- node apps --
    node_request_timeout: float = Field(60.0, gt=0, validation_alias="NODE_REQUEST_TIMEOUT",
                                        description="One HTTP call to a node app (seconds)")
    gradio_poll_interval: float = Field(1.0, gt=0, validation_alias="GRADIO_POLL_INTERVAL",
                                        description="How often a running Gradio call's progress is read; "
                                                    "its result ends the wait at once")
    comfyui_poll_interval: float = Field(2.0, gt=0, validation_alias="COMFYUI_POLL_INTERVAL")
    comfyui_ready_timeout: float = Field(300.0, ge=0, validation_alias="COMFYUI_READY_TIMEOUT",
                                         description="How long ComfyUI may take to answer /system_stats")
    portrait_extra_seconds: int = Field(3, ge=0, validation_alias="PORTRAIT_EXTRA_SECONDS",
                                        description="Clip length = ceil(audio seconds) + this")
    portrait_seed: int | None = Field(None, ge=0, validation_alias="PORTRAIT_SEED",
                                      description="Fixed SONIC seed; random per job when unset")
    analyze_model: str = Field("llama3.2-vision:11b", min_length=1, validation_alias="ANALYZE_MODEL")
    analyze_prompt: str = Field(DEFAULT_ANALYZE_PROMPT, min_length=1, validation_alias="ANALYZE_PROMPT")
    analyze_max_side: int = Field(1120, ge=64, validation_alias="ANALYZE_MAX_SIDE",
                                  description="Images sent to the vision model are scaled to fit this")
