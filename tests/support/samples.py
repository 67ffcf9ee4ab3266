"""Sample inputs made on the spot, and a local HTTP server that serves them (plus
the bad answers downloads must survive).

    /files/<name>          a sample file, with its content type
    /status/<code>         that status with a small HTML body
    /html                  a 200 HTML error page (text/html)
    /disguised             an HTML page sent as image/jpeg
    /chunked/<n>           n bytes of JPEG-ish data, chunked (no Content-Length)
    /drip                  a JPEG header, then a byte every 0.2 s (never finishes fast)
    /redirect?to=<url>     302 to the URL
"""

from __future__ import annotations

import math
import mimetypes
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import numpy as np
from PIL import Image, ImageDraw

from infra.local.simulator.apps.synth import audio_seconds

EXIF_ORIENTATION = 0x0112


def jpeg(path: Path, size: tuple[int, int], orientation: int | None = None,
         colour: tuple[int, int, int] = (70, 110, 160)) -> Path:
    """A JPEG with a marker in the top-left corner (so rotation is visible) and,
    optionally, an EXIF orientation tag."""
    img = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0] // 4, size[1] // 4], fill=(220, 30, 30))
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    img.save(path, "JPEG", quality=85, exif=exif.tobytes())
    return path


def png_bomb(path: Path, side: int = 40000) -> Path:
    """A tiny PNG whose header claims side x side pixels (over Pillow's bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def tone(seconds: float, rate: int, channels: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.tile(wave, (channels, 1)).astype(np.float32)


def audio_file(path: Path, seconds: float, rate: int = 44100, channels: int = 2) -> Path:
    """A tone as WAV (pcm_s16le) or MP3 (libmp3lame), by the suffix."""
    codec = {".wav": "pcm_s16le", ".mp3": "libmp3lame"}[path.suffix]
    layout = "stereo" if channels == 2 else "mono"
    samples = tone(seconds, rate, channels)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]),
                                               format="fltp", layout=layout)
            frame.sample_rate = rate
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return path


def video_with_audio(path: Path, seconds: float, size: tuple[int, int] = (160, 120), fps: int = 10) -> Path:
    """An MP4 (H.264 + AAC): audio that arrives as a video."""
    rate = 44100
    samples = tone(seconds, rate, 1, 330.0)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            arr = np.full((size[1], size[0], 3), (i * 7) % 255, dtype=np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(video.encode(None))
        pts = 0
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            pts += frame.samples
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def make_samples(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "portrait": jpeg(folder / "portrait.jpg", (640, 480)),
        "rotated": jpeg(folder / "rotated.jpg", (320, 240), orientation=6),  # shown as 240x320
        "large": jpeg(folder / "large.jpg", (3000, 2000)),
        "png": _png(folder / "picture.png"),
        "bomb": png_bomb(folder / "bomb.png"),
        "wav": audio_file(folder / "speech.wav", 2.2),
        "mp3": audio_file(folder / "speech.mp3", 1.6),
        "video": video_with_audio(folder / "clip.mp4", 1.5),
        "text": _text(folder / "notes.txt"),
        "broken": _broken(folder / "broken.mp3"),
    }


def _png(path: Path) -> Path:
    img = Image.new("RGBA", (200, 100), (40, 160, 60, 255))
    img.save(path, "PNG")
    return path


def _broken(path: Path) -> Path:
    path.write_bytes(b"\0" * 5000)  # no container FFmpeg recognises
    return path


def _text(path: Path) -> Path:
    path.write_text("these are not the bytes you are looking for\n" * 20)
    return path


@dataclass
class SampleServer:
    root: Path
    server: ThreadingHTTPServer

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(root: Path) -> SampleServer:
    handler = type("Handler", (_Handler,), {"root": root})
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="samples").start()
    return SampleServer(root, server)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early (size cap, cancel) are part of the tests


class _Handler(BaseHTTPRequestHandler):
    root: Path
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        path = parts.path
        html = b"<!DOCTYPE html><html><body><h1>Error</h1></body></html>"
        if path.startswith("/files/"):
            file = self.root / Path(path[len("/files/"):]).name
            if not file.is_file():
                return self._send(404, b"<html>not found</html>", "text/html")
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            return self._send(200, file.read_bytes(), ctype)
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), html, "text/html")
        if path == "/html":
            return self._send(200, html, "text/html; charset=utf-8")
        if path == "/disguised":
            return self._send(200, b"\n  " + html, "image/jpeg")
        if path.startswith("/chunked/"):
            return self._chunked(int(path.rsplit("/", 1)[1]))
        if path == "/drip":
            return self._drip()
        if path == "/redirect":
            target = parse_qs(parts.query)["to"][0]
            return self._send(302, b"", "text/plain", {"Location": target})
        self._send(404, html, "text/html")

    def _chunked(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"\xff\xd8" + b"\0" * 8190
        sent = 0
        try:
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            self.wfile.write(b"\xff\xd8\xff")
            for _ in range(200):
                time.sleep(0.2)
                self.wfile.write(b"\0")
                self.wfile.flush()
        except OSError:
            pass


def duration_of(path: Path) -> float:
    """Seconds of the first audio track, by decoding it (the simulator's own measure)."""
    return audio_seconds(path)


def video_facts(path: Path) -> dict[str, object]:
    """Decode an MP4: its size, frame count, video and audio seconds."""
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(vstream))
        width, height = vstream.codec_context.width, vstream.codec_context.height
        rate = float(vstream.average_rate or 0)
    return {"width": width, "height": height, "frames": frames, "fps": rate,
            "video_seconds": frames / rate if rate else math.nan, "audio_seconds": duration_of(path)}
