"""Media the simulated apps produce: real, decodable files, cheap to make on a CPU.

- speech: a voiced buzz per word (pitch from the voice and the word), pauses between
  sentences; as long as the text would take to say, capped per sentence.
- portrait video: the still image with a mouth bar that follows the audio's loudness,
  H.264 + AAC in MP4, as long as the audio.
- saved audio: the input re-encoded as FLAC (what ComfyUI's SaveAudio writes).
- image description: size, orientation, dominant colours and brightness."""

from __future__ import annotations

import math
import wave
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image, ImageDraw

SPEECH_RATE = 24000  # CSM generates 24 kHz audio
WORD_SECONDS = 0.32
GAP_SECONDS = 0.06
VOICE_PITCH = {"random_voice": 165.0, "conversational_a": 120.0, "conversational_b": 210.0,
               "upload_voice": 150.0}


def _word_sound(word: str, base_pitch: float, rate: int) -> np.ndarray:
    n = int(WORD_SECONDS * rate)
    t = np.arange(n) / rate
    pitch = base_pitch * (0.85 + 0.3 * (zlib.crc32(word.lower().encode()) % 100) / 100)
    glide = pitch * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(glide) / rate
    voiced = 0.6 * np.sin(phase) + 0.25 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)
    return voiced * np.hanning(n)


def speech(sentences: list[str], voice: str, max_sentence_ms: int, pause_ms: int,
           dest: Path, rate: int = SPEECH_RATE) -> float:
    """Write a mono 16-bit WAV of the sentences; returns its length in seconds."""
    base = VOICE_PITCH.get(voice, 160.0)
    gap = np.zeros(int(GAP_SECONDS * rate))
    pause = np.zeros(int(max(0, pause_ms) / 1000 * rate))
    cap = max(1, int(max_sentence_ms / 1000 * rate))
    parts: list[np.ndarray] = []
    for i, sentence in enumerate(sentences):
        words = sentence.split() or ["..."]
        said = np.concatenate([np.concatenate([_word_sound(w, base, rate), gap]) for w in words])
        parts.append(said[:cap])
        if i < len(sentences) - 1:
            parts.append(pause)
    signal = np.concatenate(parts) if parts else np.zeros(rate // 10)
    pcm = (np.clip(signal, -1, 1) * 0.5 * 32767).astype("<i2")
    with wave.open(str(dest), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return len(pcm) / rate


def audio_seconds(path: Path) -> float:
    """Decode the first audio track fully and count its samples."""
    samples, rate = 0, 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate if rate else 0.0


def audio_shape(path: Path) -> dict[str, float | int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels, rate = stream.codec_context.channels, stream.codec_context.sample_rate
    return {"channels": channels, "sample_rate": rate, "seconds": round(audio_seconds(path), 3)}


def _loudness(path: Path, fps: float, seconds: float) -> np.ndarray:
    """RMS per video frame, 0..1, for the mouth bar."""
    chunks, rate = [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            data = frame.to_ndarray().astype(np.float64)
            chunks.append(data.reshape(-1, frame.samples).mean(axis=0) if data.ndim > 1 else data)
            rate = frame.sample_rate
    if not chunks or not rate:
        return np.zeros(max(1, math.ceil(seconds * fps)))
    mono = np.concatenate(chunks)
    if np.abs(mono).max() > 1.5:  # integer samples
        mono = mono / 32768.0
    per = max(1, int(rate / fps))
    frames = max(1, math.ceil(seconds * fps))
    rms = np.array([np.sqrt(np.mean(mono[i * per:(i + 1) * per] ** 2)) if i * per < len(mono) else 0.0
                    for i in range(frames)])
    peak = rms.max()
    return rms / peak if peak > 0 else rms


def render_portrait(image: Image.Image, audio: Path, size: tuple[int, int], fps: float,
                    max_seconds: float, dest: Path, stopped: Callable[[], bool]) -> float:
    """An MP4 (H.264 yuv420p + AAC) of the image with a loudness bar, trimmed to the audio
    and to ``max_seconds``; returns its length, or raises InterruptedError when ``stopped``."""
    width, height = (max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2))
    base = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    ImageDraw.Draw(base).text((8, 8), "SIMULATED", fill=(255, 255, 0))
    pixels = np.asarray(base).copy()
    seconds = min(audio_seconds(audio), max_seconds)
    levels = _loudness(audio, fps, seconds)
    bar_w, bar_h = max(4, width // 6), max(4, height // 12)
    x0, y0 = (width - bar_w) // 2, int(height * 0.8)
    with av.open(str(dest), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=int(round(fps)), options={"preset": "ultrafast", "crf": "30"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=44100, layout="mono")
        for i, level in enumerate(levels):
            if stopped():
                raise InterruptedError("interrupted")
            frame = pixels.copy()
            h = max(1, int(bar_h * level))
            frame[y0 + (bar_h - h) // 2: y0 + (bar_h + h) // 2, x0:x0 + bar_w] = (200, 40, 40)
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode(None))
        _mux_audio(audio, out, sound, seconds)
    return seconds


def _mux_audio(src: Path, out: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
               seconds: float) -> None:
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=44100)
    limit = int(seconds * 44100)
    written = 0
    with av.open(str(src)) as inp:
        frames = [f for decoded in inp.decode(inp.streams.audio[0]) for f in resampler.resample(decoded)]
    frames += resampler.resample(None)
    for frame in frames:
        if written >= limit:
            break
        if written + frame.samples > limit:
            keep = limit - written
            data = frame.to_ndarray()[:, :keep]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout="mono")
            frame.sample_rate = 44100
        frame.pts, frame.time_base = written, Fraction(1, 44100)
        written += frame.samples
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def to_flac(src: Path, dest: Path) -> None:
    """Re-encode the first audio track of ``src`` as FLAC (16-bit, mono or stereo)."""
    with av.open(str(src)) as inp, av.open(str(dest), "w", format="flac") as out:
        source = inp.streams.audio[0]
        rate = source.codec_context.sample_rate
        layout = "mono" if source.codec_context.channels == 1 else "stereo"
        stream = out.add_stream("flac", rate=rate, layout=layout)
        resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
        for decoded in inp.decode(source):
            for frame in resampler.resample(decoded):
                out.mux(stream.encode(frame))
        for frame in resampler.resample(None):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# -- image description ----------------------------------------------------------

NAMED_COLOURS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (200, 30, 30),
    "orange": (240, 140, 20), "yellow": (240, 220, 40), "green": (40, 160, 60),
    "teal": (0, 128, 128), "blue": (40, 80, 200), "navy": (20, 30, 90), "purple": (130, 50, 160),
    "pink": (240, 150, 180), "brown": (120, 75, 40), "beige": (225, 200, 165),
    "skin tone": (230, 190, 160), "steel blue": (70, 110, 160),
}


def _nearest_name(rgb: tuple[int, int, int]) -> str:
    return min(NAMED_COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(rgb, NAMED_COLOURS[n])))


def dominant_colours(image: Image.Image, count: int = 3) -> list[tuple[str, int]]:
    """Named dominant colours with their share in percent, largest first."""
    small = image.convert("RGB").resize((64, 64))
    shares: dict[str, int] = {}
    for n, rgb in small.getcolors(64 * 64) or []:
        name = _nearest_name(rgb)
        shares[name] = shares.get(name, 0) + n
    total = sum(shares.values()) or 1
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
    return [(name, round(100 * n / total)) for name, n in ranked]


def describe(image: Image.Image, model: str) -> str:
    w, h = image.size
    shape = "square" if abs(w - h) <= max(w, h) * 0.05 else ("landscape" if w > h else "portrait")
    colours = ", ".join(f"{name} ({share}%)" for name, share in dominant_colours(image))
    brightness = round(100 * float(np.asarray(image.convert("L")).mean()) / 255)
    return (f"[simulated {model}] A {shape} image of {w}x{h} pixels. Dominant colours: {colours}. "
            f"Average brightness {brightness}%.")
