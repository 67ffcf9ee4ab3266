"""Sample inputs for the local walkthrough: a portrait image and a short speech-like WAV."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

from PIL import Image, ImageDraw


def portrait(path: Path, size: tuple[int, int] = (640, 800)) -> Path:
    """A simple drawn face on a coloured background (JPEG)."""
    w, h = size
    img = Image.new("RGB", size, (70, 110, 160))
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.25, h * 0.2, w * 0.75, h * 0.75], fill=(230, 190, 160))
    for ex in (0.4, 0.6):
        d.ellipse([w * ex - 18, h * 0.4 - 10, w * ex + 18, h * 0.4 + 10], fill=(40, 40, 40))
    d.arc([w * 0.4, h * 0.5, w * 0.6, h * 0.65], 20, 160, fill=(150, 40, 40), width=6)
    img.save(path, "JPEG", quality=90)
    return path


def speech_wav(path: Path, seconds: float = 3.0, rate: int = 16000) -> Path:
    """A mono 16-bit WAV whose pitch and loudness move like speech syllables."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        envelope = 0.5 * (1 - math.cos(2 * math.pi * 4 * t))  # ~4 syllables a second
        pitch = 140 + 30 * math.sin(2 * math.pi * 0.7 * t)
        sample = envelope * (0.6 * math.sin(2 * math.pi * pitch * t) + 0.3 * math.sin(4 * math.pi * pitch * t))
        frames += struct.pack("<h", int(sample * 12000))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def write_samples(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    portrait(folder / "portrait.jpg")
    speech_wav(folder / "speech.wav")
    return folder
