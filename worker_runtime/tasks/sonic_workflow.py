"""The SONIC portrait workflow as a ComfyUI API-format graph.

``{node_id: {"class_type": ..., "inputs": {...}}}``; a link is ``[node_id, output_index]``.
Node outputs used: ImageOnlyCheckpointLoader -> (MODEL, CLIP_VISION, VAE);
SONICTLoader -> (MODEL_SONIC, DTYPE); SONICSampler -> (IMAGE, fps)."""

from __future__ import annotations

from typing import Any

CHECKPOINT = "svd_xt.safetensors"
SONIC_UNET = "unet.pth"
MIN_RESOLUTION = 576
INFERENCE_STEPS = 25
FPS = 24.0
VIDEO_NODE = "8"


def sonic_workflow(image: str, audio: str, width: int, height: int, duration: int, seed: int,
                   prefix: str) -> dict[str, dict[str, Any]]:
    """``image``/``audio``: names ComfyUI gave the uploads; ``width``x``height``: the box the
    image is fitted into (aspect kept); ``duration``: clip seconds; ``prefix``: output name."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageResize+", "inputs": {
            "image": ["1", 0], "width": width, "height": height, "interpolation": "lanczos",
            "method": "keep proportion", "condition": "downscale if bigger", "multiple_of": 0}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": audio}},
        "4": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {"class_type": "SONICTLoader", "inputs": {
            "model": ["4", 0], "sonic_unet": SONIC_UNET, "ip_audio_scale": 1.0,
            "use_interframe": True, "dtype": "bf16"}},
        "6": {"class_type": "SONIC_PreData", "inputs": {
            "clip_vision": ["4", 1], "vae": ["4", 2], "audio": ["3", 0], "image": ["2", 0],
            "weight_dtype": ["5", 1], "min_resolution": MIN_RESOLUTION,
            "duration": float(duration), "expand_ratio": 0.5}},
        "7": {"class_type": "SONICSampler", "inputs": {
            "model": ["5", 0], "data_dict": ["6", 0], "seed": seed,
            "inference_steps": INFERENCE_STEPS, "dynamic_scale": 1.0, "fps": FPS}},
        VIDEO_NODE: {"class_type": "VHS_VideoCombine", "inputs": {
            "images": ["7", 0], "frame_rate": ["7", 1], "audio": ["3", 0], "loop_count": 0,
            "filename_prefix": prefix, "format": "video/h264-mp4", "pix_fmt": "yuv420p",
            "crf": 19, "save_metadata": True, "trim_to_audio": True, "pingpong": False,
            "save_output": True}},
    }
