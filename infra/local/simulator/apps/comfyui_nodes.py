"""The node classes the simulated ComfyUI knows: ComfyUI's own core loaders and output
nodes plus the SONIC portrait nodes (ComfyUI_Sonic, Essentials, VideoHelperSuite).

Each class declares its inputs the way ``INPUT_TYPES`` does: a type name (``"IMAGE"``,
``"INT"`` ...), a list of choices, or ``"file:image"`` / ``"file:audio"`` for an input
file checked like ``LoadImage`` / ``LoadAudio``'s ``VALIDATE_INPUTS``. Inputs a graph
carries beyond these (``"upload"``, ``"audioUI"`` from the web UI) are ignored, as
ComfyUI does. UI-only nodes (``Note``, ``MarkdownNote``, ``PrimitiveNode``, ``Reroute``)
are not here: the web UI never sends them, and ComfyUI's ``/prompt`` rejects them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "area", "nearest-exact", "lanczos"]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
Spec = str | list[Any]


@dataclass(frozen=True)
class NodeClass:
    required: dict[str, Spec]
    optional: dict[str, Spec] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_node: bool = False

    def inputs(self) -> dict[str, Spec]:
        return {**self.required, **self.optional}


@dataclass(frozen=True)
class Frames:
    """A ComfyUI IMAGE (a batch of frames), simulated as one still and a frame count."""

    still: Image.Image
    count: int = 1


@dataclass(frozen=True)
class Audio:
    """A ComfyUI AUDIO, simulated as the file it came from."""

    path: Path


NODE_CLASSES: dict[str, NodeClass] = {
    # ComfyUI core (nodes.py, comfy_extras/nodes_audio.py)
    "LoadImage": NodeClass({"image": "file:image"}, outputs=("IMAGE", "MASK")),
    "LoadAudio": NodeClass({"audio": "file:audio"}, outputs=("AUDIO",)),
    "SaveImage": NodeClass({"images": "IMAGE", "filename_prefix": "STRING"}, output_node=True),
    "PreviewImage": NodeClass({"images": "IMAGE"}, output_node=True),
    "SaveAudio": NodeClass({"audio": "AUDIO", "filename_prefix": "STRING"}, output_node=True),
    "PreviewAudio": NodeClass({"audio": "AUDIO"}, output_node=True),
    "ImageOnlyCheckpointLoader": NodeClass(
        {"ckpt_name": ["svd_xt.safetensors", "svd_xt_1_1.safetensors"]}, outputs=("MODEL", "CLIP_VISION", "VAE")),
    # ComfyUI_essentials
    "ImageResize+": NodeClass(
        {"image": "IMAGE", "width": "INT", "height": "INT", "interpolation": INTERPOLATIONS,
         "method": ["stretch", "keep proportion", "fill / crop", "pad"],
         "condition": ["always", "downscale if bigger", "upscale if smaller", "if bigger area", "if smaller area"],
         "multiple_of": "INT"},
        outputs=("IMAGE", "INT", "INT")),
    # ComfyUI_Sonic
    "SONICTLoader": NodeClass(
        {"model": "MODEL", "sonic_unet": ["none", "unet.pth"], "ip_audio_scale": "FLOAT",
         "use_interframe": "BOOLEAN", "dtype": ["fp16", "fp32", "bf16"]},
        outputs=("MODEL_SONIC", "DTYPE")),
    "SONIC_PreData": NodeClass(
        {"clip_vision": "CLIP_VISION", "vae": "VAE", "audio": "AUDIO", "image": "IMAGE", "weight_dtype": "DTYPE",
         "min_resolution": "INT", "duration": "FLOAT", "expand_ratio": "FLOAT"},
        outputs=("SONIC_PREDATA",)),
    "SONICSampler": NodeClass(
        {"model": "MODEL_SONIC", "data_dict": "SONIC_PREDATA", "seed": "INT", "inference_steps": "INT",
         "dynamic_scale": "FLOAT", "fps": "FLOAT"},
        outputs=("IMAGE", "FLOAT")),
    # ComfyUI-VideoHelperSuite
    "VHS_VideoCombine": NodeClass(
        {"images": "IMAGE", "frame_rate": "FLOAT", "loop_count": "INT", "filename_prefix": "STRING",
         "format": ["image/gif", "image/webp", "video/h264-mp4", "video/webm"], "pingpong": "BOOLEAN",
         "save_output": "BOOLEAN"},
        optional={"audio": "AUDIO", "pix_fmt": ["yuv420p", "yuv420p10le"], "crf": "INT",
                  "save_metadata": "BOOLEAN", "trim_to_audio": "BOOLEAN"},
        outputs=("VHS_FILENAMES",), output_node=True),
}


def output_nodes(graph: dict[str, Any]) -> list[str]:
    """The ids of the graph's output nodes (its classes must all be known)."""
    return [node_id for node_id, node in graph.items() if NODE_CLASSES[node["class_type"]].output_node]
