"""Image and audio preparation on the worker, with Pillow and PyAV (no system ffmpeg).

Images: EXIF orientation applied, converted to RGB, scaled down past a maximum side.
Pillow's decompression-bomb guard stays on: an image claiming too many pixels is
refused before it is decoded. Audio: probed for its duration, converted to plain
MP3/WAV when it arrives as video or in another container, made mono for cloning.

``source`` arguments name where a file came from (``"image_url https://..."``), so
that errors say which input was bad."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageOps, UnidentifiedImageError

from .tasks.base import TaskError

# Containers the node apps read as they are; anything else is converted.
PLAIN_AUDIO = {"mp3": ".mp3", "wav": ".wav"}
MP3_RATES = (48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


# -- images -------------------------------------------------------------------

@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    original_width: int
    original_height: int


def open_image(path: Path, source: str, max_pixels: int | None = None,
               draft: tuple[int, int] | None = None) -> Image.Image:
    """Open and decode an image, or raise TaskError saying why it is not one. Its size is
    checked from the header against ``max_pixels`` before a pixel is decoded; ``draft``
    lets a JPEG decode at a reduced scale that still covers that size."""
    try:
        image = Image.open(path)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise TaskError(f"{source} was refused: {width}x{height} is {width * height} pixels, over the "
                            f"limit of {max_pixels} pixels (MAX_IMAGE_PIXELS)")
        if draft is not None:
            image.draft("RGB", draft)
        image.load()
    except Image.DecompressionBombError as exc:
        raise TaskError(f"{source} was refused: {exc}") from None
    except UnidentifiedImageError:
        raise TaskError(f"{source} is not an image Pillow can read") from None
    except MemoryError:
        raise TaskError(f"{source} needs more memory to decode than a task may use "
                        "(TASK_MEMORY_LIMIT_MB)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise TaskError(f"{source} is not a readable image: {exc}") from None
    return image


def upright_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and flatten to RGB (transparency onto white)."""
    return _rgb(ImageOps.exif_transpose(image))


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_within(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest size within the box that keeps the aspect ratio; never upscales."""
    scale = min(1.0, max_width / width, max_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
# Modes that resample badly (palette, bilevel) or not at all: converted before scaling.
RESAMPLES_WELL = ("RGB", "RGBA", "L", "LA")


def prepare_image(src: Path, dest: Path, max_side: int, source: str, fmt: str = "JPEG",
                  max_pixels: int | None = None) -> ImageInfo:
    """Decode ``src``, scale it to ``max_side``, make it upright RGB and save as ``fmt``.

    Holds one full-size copy at most: the header is checked against ``max_pixels`` before
    decoding, a JPEG decodes at a reduced scale when it can, and the image is scaled down
    first (box-reduced, then resampled) so that orientation and colour work on the small one."""
    image = open_image(src, source, max_pixels, draft=(max_side, max_side))
    with Image.open(src) as header:
        original = header.size  # before draft scaling
    try:
        orientation = UPRIGHT.get(image.getexif().get(0x0112))
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode not in RESAMPLES_WELL:
            image = image.convert("RGBA" if "transparency" in image.info or "A" in image.mode else "RGB")
        size = fit_within(*image.size, max_side, max_side)  # a square box: orientation does not matter
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if orientation is not None:
            image = image.transpose(orientation)
        image = _rgb(image)
    except MemoryError:
        raise TaskError(f"{source} needs more memory to convert than a task may use (TASK_MEMORY_LIMIT_MB)") from None
    params = {"quality": 92} if fmt == "JPEG" else {}
    image.save(dest, fmt, **params)
    return ImageInfo(image.width, image.height, *original)


# -- audio ----------------------------------------------------------------------

@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds
    container: str  # the demuxer's short name, e.g. "mp3", "wav", "mov"
    codec: str
    channels: int
    sample_rate: int
    has_video: bool

    @property
    def is_plain(self) -> bool:
        return self.container in PLAIN_AUDIO and not self.has_video


# The demuxers media may be opened with. FFmpeg's own probing would also pick playlists
# and references to other files or URLs (ffconcat, HLS, image2 patterns, SDP, ...): a
# user's "audio" could make it read files of the work directory into the job's output.
ALLOWED_DEMUXERS = ("wav", "mp3", "flac", "ogg", "aac", "mov", "matroska")
# Only the file itself: a demuxer that tries to open anything else (another protocol,
# a nested URL) is refused by FFmpeg. mov's external data references stay off (its default).
OPEN_OPTIONS = {"protocol_whitelist": "file"}


def sniff_demuxer(path: Path) -> str | None:
    """The allowed demuxer ``path``'s leading bytes call for, or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov"  # also mp4, m4a, 3gp
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # also webm
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame sync
        return "aac" if (head[1] >> 1) & 0x03 == 0 else "mp3"  # layer bits 00: ADTS AAC
    return None


def _open(path: Path, source: str) -> av.container.InputContainer:
    """Open ``path`` with the allowed demuxer its bytes call for, never FFmpeg's guess."""
    demuxer = sniff_demuxer(path)
    if demuxer is None:
        raise TaskError(f"{source} is not a readable audio or video file: not a format allowed "
                        f"(WAV, MP3, FLAC, Ogg, AAC, MP4/MOV, Matroska/WebM)")
    try:
        return av.open(str(path), format=demuxer, options=dict(OPEN_OPTIONS))
    except av.FFmpegError as exc:
        raise TaskError(f"{source} is not a readable audio or video file: {_reason(exc)}") from None


def _reason(exc: av.FFmpegError) -> str:
    """FFmpeg's reason without the local file path."""
    return exc.strerror or type(exc).__name__


def _audio_stream(container: av.container.InputContainer, source: str) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise TaskError(f"{source} has no audio track")
    return container.streams.audio[0]


def probe_audio(path: Path, source: str) -> AudioInfo:
    """Duration and shape of the first audio track; decodes when headers do not tell."""
    with _open(path, source) as container:
        stream = _audio_stream(container, source)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        ctx = stream.codec_context
        info = dict(container=container.format.name.split(",")[0], codec=ctx.name,
                    channels=ctx.channels, sample_rate=ctx.sample_rate,
                    has_video=bool(container.streams.video))
    if not duration or duration <= 0:
        duration = _decoded_duration(path, source)
    return AudioInfo(duration=duration, **info)


def _decoded_duration(path: Path, source: str) -> float:
    samples, rate = 0, 0
    try:
        with _open(path, source) as container:
            stream = _audio_stream(container, source)
            for frame in container.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate
    except av.FFmpegError as exc:
        raise TaskError(f"{source} could not be decoded: {_reason(exc)}") from None
    if not samples or not rate:
        raise TaskError(f"{source} holds no audio samples")
    return samples / rate


def convert_audio(src: Path, dest: Path, source: str, mono: bool = False) -> float:
    """Decode the first audio track of ``src`` and write it as plain audio; the
    format follows ``dest``'s suffix (.mp3 or .wav). Returns the duration in seconds."""
    codec = {".mp3": "libmp3lame", ".wav": "pcm_s16le"}[dest.suffix.lower()]
    samples = 0
    try:
        with _open(src, source) as inp, av.open(str(dest), "w") as out:
            stream = _audio_stream(inp, source)
            channels = 1 if mono else min(2, max(1, stream.codec_context.channels or 1))
            rate = stream.codec_context.sample_rate or 44100
            if codec == "libmp3lame" and rate not in MP3_RATES:
                rate = 44100
            layout = "mono" if channels == 1 else "stereo"
            encoder = out.add_stream(codec, rate=rate, layout=layout)
            fmt = "s16" if codec == "pcm_s16le" else "s16p"
            resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
            for frame in inp.decode(stream):
                frame.pts = None
                for converted in resampler.resample(frame):
                    samples += converted.samples
                    out.mux(encoder.encode(converted))
            for converted in resampler.resample(None):
                samples += converted.samples
                out.mux(encoder.encode(converted))
            out.mux(encoder.encode(None))
    except av.FFmpegError as exc:
        dest.unlink(missing_ok=True)
        raise TaskError(f"{source} could not be converted to {dest.suffix[1:]}: {_reason(exc)}") from None
    if samples == 0:
        dest.unlink(missing_ok=True)
        raise TaskError(f"{source} holds no audio samples")
    return samples / rate


def plain_audio(src: Path, stem: Path, source: str) -> tuple[Path, AudioInfo]:
    """``src`` as a plain audio file named ``{stem}.mp3`` (or ``.wav`` when it already is
    one): kept when it is plain MP3/WAV, converted when it is video or another container."""
    info = probe_audio(src, source)
    if info.is_plain:
        dest = stem.with_name(stem.name + PLAIN_AUDIO[info.container])
        if src != dest:
            shutil.move(str(src), dest)
        return dest, info
    dest = stem.with_name(stem.name + ".mp3")
    convert_audio(src, dest, source)
    return dest, probe_audio(dest, source)


def check_video(path: Path, source: str) -> None:
    """Raise TaskError unless ``path`` opens as a container with a video track."""
    with _open(path, source) as container:
        if not container.streams.video:
            raise TaskError(f"{source} has no video track")


def clip_seconds(duration: float, extra: int) -> int:
    """SONIC clip length: the audio's seconds rounded up, plus ``extra``."""
    return math.ceil(duration - 1e-6) + extra
