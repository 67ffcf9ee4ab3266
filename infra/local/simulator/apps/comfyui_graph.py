"""Validation of a submitted ComfyUI API-format graph, the way ComfyUI answers /prompt.

Only the node classes the SONIC portrait workflow uses are known. Checked: known
class types, required inputs present, links ``[node_id, output_index]`` pointing at
existing nodes and outputs of the right type, widget values of the right type or
in the allowed list, uploaded files that exist, and at least one output node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "area", "nearest-exact", "lanczos"]
# class_type -> required inputs (type name, a list of choices, or "file"), optional inputs,
# output types, and whether it is an output node.
NODE_TYPES: dict[str, dict[str, Any]] = {
    "LoadImage": {"required": {"image": "file"}, "outputs": ["IMAGE", "MASK"]},
    "LoadAudio": {"required": {"audio": "file"}, "outputs": ["AUDIO"]},
    "ImageResize+": {
        "required": {"image": "IMAGE", "width": "INT", "height": "INT", "interpolation": INTERPOLATIONS,
                     "method": ["stretch", "keep proportion", "fill / crop", "pad"],
                     "condition": ["always", "downscale if bigger", "upscale if smaller",
                                   "if bigger area", "if smaller area"],
                     "multiple_of": "INT"},
        "outputs": ["IMAGE", "INT", "INT"]},
    "ImageOnlyCheckpointLoader": {"required": {"ckpt_name": ["svd_xt.safetensors", "svd_xt_1_1.safetensors"]},
                                  "outputs": ["MODEL", "CLIP_VISION", "VAE"]},
    "SONICTLoader": {
        "required": {"model": "MODEL", "sonic_unet": ["none", "unet.pth"], "ip_audio_scale": "FLOAT",
                     "use_interframe": "BOOLEAN", "dtype": ["fp16", "fp32", "bf16"]},
        "outputs": ["MODEL_SONIC", "DTYPE"]},
    "SONIC_PreData": {
        "required": {"clip_vision": "CLIP_VISION", "vae": "VAE", "audio": "AUDIO", "image": "IMAGE",
                     "weight_dtype": "DTYPE", "min_resolution": "INT", "duration": "FLOAT",
                     "expand_ratio": "FLOAT"},
        "outputs": ["SONIC_PREDATA"]},
    "SONICSampler": {
        "required": {"model": "MODEL_SONIC", "data_dict": "SONIC_PREDATA", "seed": "INT",
                     "inference_steps": "INT", "dynamic_scale": "FLOAT", "fps": "FLOAT"},
        "outputs": ["IMAGE", "FLOAT"]},
    "VHS_VideoCombine": {
        "required": {"images": "IMAGE", "frame_rate": "FLOAT", "loop_count": "INT",
                     "filename_prefix": "STRING",
                     "format": ["image/gif", "image/webp", "video/h264-mp4", "video/webm"],
                     "pingpong": "BOOLEAN", "save_output": "BOOLEAN"},
        "optional": {"audio": "AUDIO", "pix_fmt": ["yuv420p", "yuv420p10le"], "crf": "INT",
                     "save_metadata": "BOOLEAN", "trim_to_audio": "BOOLEAN"},
        "outputs": ["VHS_FILENAMES"], "output_node": True},
}
WIDGET_TYPES = {"INT": (int,), "FLOAT": (int, float), "STRING": (str,), "BOOLEAN": (bool,)}


def _err(kind: str, message: str, details: str, name: str | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details,
            "extra_info": {"input_name": name} if name else {}}


def _check_input(graph: dict[str, Any], name: str, spec: Any, value: Any, files: Path) -> dict | None:
    if isinstance(value, list):  # a link
        if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
            return _err("bad_linked_input", "Bad linked input, must be a length-2 list of [string, int]",
                        f"{name}: {value}", name)
        source = graph.get(value[0])
        if not isinstance(source, dict) or source.get("class_type") not in NODE_TYPES:
            return _err("bad_linked_input", "Linked node does not exist", f"{name}: node {value[0]}", name)
        outputs = NODE_TYPES[source["class_type"]]["outputs"]
        if not 0 <= value[1] < len(outputs):
            return _err("bad_linked_input", "Linked output index out of range",
                        f"{name}: {source['class_type']} has {len(outputs)} outputs", name)
        got = outputs[value[1]]
        wanted = spec if isinstance(spec, str) and spec != "file" else None
        if wanted is not None and got != wanted:
            return _err("return_type_mismatch", "Return type mismatch between linked nodes",
                        f"{name}, received_type({got}) mismatch input_type({wanted})", name)
        return None
    if spec == "file":
        if not isinstance(value, str) or not value or ".." in Path(value).parts or not (files / value).is_file():
            return _err("custom_validation_failed", "Custom validation failed for node",
                        f"{name} - Invalid file: {value}", name)
        return None
    if isinstance(spec, list):
        if value not in spec:
            return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {spec}", name)
        return None
    types = WIDGET_TYPES.get(spec)
    if types is None:  # a link-only type given a literal
        return _err("invalid_input_type", "Input must be a link", f"{name} expects {spec} from another node", name)
    if isinstance(value, bool) and spec != "BOOLEAN" or not isinstance(value, types):
        return _err("invalid_input_type", f"Failed to convert an input value to a {spec} value",
                    f"{name}, {value!r}", name)
    return None


def validate(graph: Any, files: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Returns (error, node_errors); both empty when the graph may run."""
    if not isinstance(graph, dict) or not graph:
        return _err("invalid_prompt", "Invalid prompt", "the prompt must be a non-empty object"), {}
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type not in NODE_TYPES:
            return (_err("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                         f"Node ID '#{node_id}'"), {})
    if not any(NODE_TYPES[n["class_type"]].get("output_node") for n in graph.values()):
        return _err("prompt_no_outputs", "Prompt has no outputs", ""), {}
    node_errors: dict[str, Any] = {}
    for node_id, node in graph.items():
        schema = NODE_TYPES[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors = [_err("required_input_missing", "Required input is missing", name, name)
                  for name in schema["required"] if name not in inputs]
        specs = {**schema["required"], **schema.get("optional", {})}
        for name, value in inputs.items():
            if name in specs:
                problem = _check_input(graph, name, specs[name], value, files)
                if problem:
                    errors.append(problem)
        if errors:
            node_errors[node_id] = {"errors": errors, "dependent_outputs": [],
                                    "class_type": node["class_type"]}
    if node_errors:
        return _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", ""), node_errors
    return None, {}
