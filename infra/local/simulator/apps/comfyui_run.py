"""Runs a validated graph, node by node from its output nodes (memoized), as ComfyUI
does: each node gets its declared inputs only, widget values already converted.

Output nodes report what they wrote, as ComfyUI's history lists it: SaveImage and
PreviewImage under ``images`` (one PNG per frame), SaveAudio and PreviewAudio under
``audio`` (FLAC), VHS_VideoCombine under ``gifs`` (an MP4). Save* write to the output
folder (``type: output``), Preview* to the temp folder (``type: temp``)."""

from __future__ import annotations

import math
import os
import random
import shutil
import string
from pathlib import Path
from typing import Any, Callable, Protocol

from PIL import Image, ImageOps

from . import synth
from .comfyui_nodes import Audio, Frames


class Interrupted(Exception):
    pass


class ExecutionFailed(Exception):
    def __init__(self, node_id: str, node_type: str, exc_type: str, message: str):
        super().__init__(message)
        self.node_id, self.node_type, self.exc_type = node_id, node_type, exc_type


class Folders(Protocol):
    inputs: Path
    outputs: Path
    temp: Path
    log: Any

    def next_file(self) -> int: ...

    def interrupted(self) -> bool: ...


class Runner:
    def __init__(self, folders: Folders, graph: dict[str, Any], values: dict[str, dict[str, Any]]):
        self.dirs, self.graph, self.values = folders, graph, values
        self.done: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, dict[str, Any]] = {}

    def outputs(self, output_ids: list[str]) -> dict[str, Any]:
        """Run the given output nodes; returns their UI results by node id."""
        for node_id in output_ids:
            self.value(node_id)
        return {node_id: self.ui[node_id] for node_id in output_ids if node_id in self.ui}

    def value(self, node_id: str) -> tuple[Any, ...]:
        if node_id not in self.done:
            class_type = self.graph[node_id]["class_type"]
            args = {k: (self.value(v[0])[v[1]] if isinstance(v, list) else v)
                    for k, v in self.values[node_id].items()}
            if self.dirs.interrupted():
                raise Interrupted()
            handler: Callable[..., tuple[Any, ...]] = getattr(self, "_" + class_type.replace("+", "_plus"))
            try:
                self.done[node_id] = handler(node_id, **args)
            except (Interrupted, ExecutionFailed):
                raise
            except Exception as exc:  # noqa: BLE001 - reported like ComfyUI: the node and the exception
                raise ExecutionFailed(node_id, class_type, type(exc).__name__, str(exc)) from exc
        return self.done[node_id]

    def _show(self, node_id: str, key: str, items: list[dict[str, Any]]) -> tuple[()]:
        self.ui[node_id] = {key: items}
        return ()

    # -- ComfyUI core ------------------------------------------------------------
    def _LoadImage(self, node_id: str, image: str) -> tuple[Any, ...]:
        with Image.open(self.dirs.inputs / image) as img:
            return Frames(ImageOps.exif_transpose(img).convert("RGB")), None

    def _LoadAudio(self, node_id: str, audio: str) -> tuple[Any, ...]:
        return (Audio(self.dirs.inputs / audio),)

    def _SaveImage(self, node_id: str, images: Frames, filename_prefix: str) -> tuple[()]:
        return self._show(node_id, "images", self._pngs(images, self.dirs.outputs, filename_prefix, "output"))

    def _PreviewImage(self, node_id: str, images: Frames) -> tuple[()]:
        return self._show(node_id, "images", self._pngs(images, self.dirs.temp, _temp_prefix(), "temp"))

    def _SaveAudio(self, node_id: str, audio: Audio, filename_prefix: str) -> tuple[()]:
        return self._show(node_id, "audio", [self._flac(audio, self.dirs.outputs, filename_prefix, "output")])

    def _PreviewAudio(self, node_id: str, audio: Audio) -> tuple[()]:
        return self._show(node_id, "audio", [self._flac(audio, self.dirs.temp, _temp_prefix(), "temp")])

    def _ImageOnlyCheckpointLoader(self, node_id: str, ckpt_name: str) -> tuple[Any, ...]:
        return f"model:{ckpt_name}", f"clip_vision:{ckpt_name}", f"vae:{ckpt_name}"

    # -- SONIC and its helpers ---------------------------------------------------
    def _ImageResize_plus(self, node_id: str, image: Frames, width: int, height: int, method: str,
                          condition: str, **_: Any) -> tuple[Any, ...]:
        still = image.still
        w, h = still.size
        if method == "keep proportion":
            ratio = min(width / w if width else 1e9, height / h if height else 1e9)
            tw, th = round(w * ratio), round(h * ratio)
        else:
            tw, th = width or w, height or h
        bigger, smaller = tw < w or th < h, tw > w or th > h
        if condition == "always" or (condition == "downscale if bigger" and bigger) or \
                (condition == "upscale if smaller" and smaller):
            still = still.resize((tw, th), Image.Resampling.LANCZOS)
        return Frames(still, image.count), still.width, still.height

    def _SONICTLoader(self, node_id: str, dtype: str, **_: Any) -> tuple[Any, ...]:
        return "sonic", dtype

    def _SONIC_PreData(self, node_id: str, audio: Audio, image: Frames, min_resolution: int,
                       duration: float, **_: Any) -> tuple[Any, ...]:
        return ({"image": image.still, "audio": audio.path, "min_resolution": min_resolution,
                 "duration": duration},)

    def _SONICSampler(self, node_id: str, data_dict: dict[str, Any], fps: float, **_: Any) -> tuple[Any, ...]:
        """SONIC's frames: the image at min_resolution on its short side, one per 1/fps of
        the audio (at most ``duration`` seconds)."""
        image: Image.Image = data_dict["image"]
        scale = data_dict["min_resolution"] / min(image.size)
        still = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        seconds = min(synth.audio_seconds(data_dict["audio"]), float(data_dict["duration"]))
        return Frames(still, max(1, math.ceil(seconds * fps))), fps

    def _VHS_VideoCombine(self, node_id: str, images: Frames, frame_rate: float, filename_prefix: str,
                          save_output: bool, audio: Audio | None = None, format: str = "",
                          **_: Any) -> tuple[Any, ...]:
        if audio is None:
            raise ExecutionFailed(node_id, "VHS_VideoCombine", "ValueError", "the simulator renders with audio only")
        base, kind = (self.dirs.outputs, "output") if save_output else (self.dirs.temp, "temp")
        folder, stem, subfolder = _save_path(base, filename_prefix)
        dest = folder / f"{stem}_{self.dirs.next_file():05}.mp4"
        try:
            seconds = synth.render_portrait(images.still, audio.path, images.still.size, float(frame_rate),
                                            images.count / float(frame_rate), dest, self.dirs.interrupted)
        except InterruptedError:
            dest.unlink(missing_ok=True)
            raise Interrupted() from None
        self.dirs.log.info("sim.rendered", file=dest.name, seconds=round(seconds, 3),
                           size="{}x{}".format(*images.still.size),
                           reason="simulated SONIC: still image + loudness bar, not a model")
        item = {"filename": dest.name, "subfolder": subfolder, "type": kind, "format": "video/h264-mp4",
                "frame_rate": frame_rate}
        self._show(node_id, "gifs", [item])
        return ((True, [str(dest)]),)

    # -- files -------------------------------------------------------------------
    def _pngs(self, images: Frames, base: Path, prefix: str, kind: str) -> list[dict[str, Any]]:
        """One PNG per frame; the frames of a still are one encoding, linked."""
        folder, stem, subfolder = _save_path(base, prefix)
        first = folder / f"{stem}_{self.dirs.next_file():05}_.png"
        images.still.save(first, compress_level=1)
        written = [first]
        for _ in range(images.count - 1):
            dest = folder / f"{stem}_{self.dirs.next_file():05}_.png"
            try:
                os.link(first, dest)
            except OSError:
                shutil.copyfile(first, dest)
            written.append(dest)
        return [{"filename": p.name, "subfolder": subfolder, "type": kind} for p in written]

    def _flac(self, audio: Audio, base: Path, prefix: str, kind: str) -> dict[str, Any]:
        folder, stem, subfolder = _save_path(base, prefix)
        dest = folder / f"{stem}_{self.dirs.next_file():05}_.flac"
        synth.to_flac(audio.path, dest)
        return {"filename": dest.name, "subfolder": subfolder, "type": kind}


def _temp_prefix() -> str:
    """PreviewImage/PreviewAudio's file prefix: ``ComfyUI_temp_`` and five random letters."""
    return "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))


def _save_path(base: Path, prefix: str) -> tuple[Path, str, str]:
    """(folder, file stem, subfolder) for a ``filename_prefix`` such as ``c3render/job``."""
    target = (base / prefix).resolve()
    if base.resolve() not in target.parents:
        raise ValueError(f"Saving outside the output folder is not allowed: {prefix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    subfolder = str(target.parent.relative_to(base.resolve()))
    return target.parent, target.name, "" if subfolder == "." else subfolder
