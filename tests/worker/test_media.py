"""Image and audio preparation with Pillow and PyAV, on generated sample files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.support import samples
from worker_runtime import media
from worker_runtime.tasks.base import TaskError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return samples.make_samples(tmp_path_factory.mktemp("media"))


def copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(src, tmp_path / src.name))


def test_exif_orientation_is_applied(files: dict[str, Path], tmp_path: Path) -> None:
    info = media.prepare_image(files["rotated"], tmp_path / "out.jpg", 2048, "image_url x")
    assert (info.original_width, info.original_height) == (320, 240)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (240, 320)
        # Orientation 6 turns the picture clockwise: the red top-left marker is now top-right.
        red, green, blue = out.getpixel((230, 10))
        assert red > 180 and green < 80 and blue < 80
        assert out.getpixel((10, 10))[2] > 120  # background blue, no marker


def test_large_images_are_scaled_down_keeping_aspect(files: dict[str, Path], tmp_path: Path) -> None:
    info = media.prepare_image(files["large"], tmp_path / "out.jpg", 2048, "image_url x")
    assert (info.width, info.height) == (2048, 1365)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (2048, 1365) and out.format == "JPEG"


def test_transparent_png_becomes_rgb_jpeg(files: dict[str, Path], tmp_path: Path) -> None:
    media.prepare_image(files["png"], tmp_path / "out.jpg", 2048, "image_url x")
    with Image.open(tmp_path / "out.jpg") as out:
        assert (out.mode, out.size) == ("RGB", (200, 100))


def test_decompression_bomb_guard_stays_on(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"^image_url http://x/bomb.png was refused: .*exceeds limit"):
        media.prepare_image(files["bomb"], tmp_path / "out.jpg", 2048, "image_url http://x/bomb.png")


def test_pixel_limit_is_read_from_the_header_before_decoding(tmp_path: Path) -> None:
    # The header claims 7000x7000; the pixel data is a stub that would not even decode.
    claim = samples.png_bomb(tmp_path / "claim.png", side=7000)
    with pytest.raises(TaskError) as info:
        media.prepare_image(claim, tmp_path / "out.jpg", 2048, "image_url u", max_pixels=40_000_000)
    assert str(info.value) == ("image_url u was refused: 7000x7000 is 49000000 pixels, over the limit of "
                               "40000000 pixels (MAX_IMAGE_PIXELS)")


def test_large_rotated_image_is_scaled_then_turned_upright(tmp_path: Path) -> None:
    src = samples.jpeg(tmp_path / "big-rotated.jpg", (3000, 2000), orientation=6)
    info = media.prepare_image(src, tmp_path / "out.jpg", 1000, "image_url x")
    assert (info.width, info.height, info.original_width, info.original_height) == (667, 1000, 3000, 2000)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (667, 1000)
        red, green, blue = out.getpixel((650, 20))  # the top-left marker, turned to the top right
        assert red > 180 and green < 80 and blue < 80


def test_not_an_image(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"^image_url u is not an image Pillow can read$"):
        media.prepare_image(files["text"], tmp_path / "out.jpg", 2048, "image_url u")


@pytest.mark.parametrize("size, box, fitted", [
    ((2048, 1365), (1280, 720), (1080, 720)),
    ((720, 1280), (1280, 720), (405, 720)),
    ((3000, 1000), (1280, 720), (1280, 427)),
    ((640, 480), (1280, 720), (640, 480)),  # never upscaled
])
def test_fit_within(size: tuple[int, int], box: tuple[int, int], fitted: tuple[int, int]) -> None:
    assert media.fit_within(*size, *box) == fitted


def test_probe_audio_and_video(files: dict[str, Path]) -> None:
    wav = media.probe_audio(files["wav"], "audio_url x")
    assert wav.duration == pytest.approx(2.2, abs=0.01)
    assert (wav.container, wav.channels, wav.sample_rate, wav.is_plain) == ("wav", 2, 44100, True)
    video = media.probe_audio(files["video"], "audio_url x")
    assert video.has_video and not video.is_plain
    assert video.duration == pytest.approx(1.5, abs=0.1)


def test_convert_to_mono_wav(files: dict[str, Path], tmp_path: Path) -> None:
    seconds = media.convert_audio(files["mp3"], tmp_path / "mono.wav", "reference_audio_url x", mono=True)
    info = media.probe_audio(tmp_path / "mono.wav", "x")
    assert (info.container, info.channels) == ("wav", 1)
    assert seconds == pytest.approx(samples.duration_of(tmp_path / "mono.wav"), abs=0.01)
    assert seconds == pytest.approx(1.6, abs=0.1)


def test_video_becomes_plain_mp3_and_plain_audio_is_kept(files: dict[str, Path], tmp_path: Path) -> None:
    path, info = media.plain_audio(copy(files["video"], tmp_path), tmp_path / "job_audio", "audio_url x")
    assert path == tmp_path / "job_audio.mp3"
    assert (info.container, info.has_video) == ("mp3", False)
    assert samples.duration_of(path) == pytest.approx(1.5, abs=0.1)

    original = files["wav"].read_bytes()
    kept, info = media.plain_audio(copy(files["wav"], tmp_path), tmp_path / "job_input", "audio_url y")
    assert kept == tmp_path / "job_input.wav" and kept.read_bytes() == original


@pytest.mark.parametrize("name, message", [
    ("broken", r"^audio_url u is not a readable audio or video file: not a format allowed \(WAV, MP3, "),
    ("text", r"^audio_url u is not a readable audio or video file: not a format allowed "),
    ("portrait", r"^audio_url u is not a readable audio or video file: not a format allowed "),
])
def test_bad_audio(files: dict[str, Path], name: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        media.probe_audio(files[name], "audio_url u")


@pytest.mark.parametrize("seconds, clip", [(1.6, 5), (2.0, 5), (2.01, 6), (0.2, 4)])
def test_clip_length_is_audio_rounded_up_plus_three(seconds: float, clip: int) -> None:
    assert media.clip_seconds(seconds, 3) == clip
