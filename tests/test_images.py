"""Tests for bench.data.images: every file flavour decodes to the right pixels, or fails cleanly."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from bench.data import images
from bench.data.images import (
    IMAGE_SUFFIXES,
    RESIZE_MODES,
    UnreadableImage,
    decode_image,
    decode_many,
    is_image_file,
)
from bench.errors import ConfigError, DataError

RED, GREEN, BLUE = (220, 20, 30), (20, 200, 40), (30, 40, 210)


def near(pixel: np.ndarray, colour: tuple[int, ...], tol: int = 0) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


def quadrants(w: int = 40, h: int = 40) -> Image.Image:
    """RGB image: red top-left, green top-right, blue bottom-left, white bottom-right."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :, : w // 2] = BLUE
    a[h // 2 :, w // 2 :] = 255
    return Image.fromarray(a)


def opened(path: Path, attr: str) -> Any:
    with Image.open(path) as im:
        return getattr(im, attr)


def check_quadrants(out: np.ndarray, tol: int) -> None:
    s = out.shape[0]
    q, r = s // 4, 3 * s // 4  # centres of the quadrants, away from (JPEG-blurred) edges
    assert near(out[q, q], RED, tol)
    assert near(out[q, r], GREEN, tol)
    assert near(out[r, q], BLUE, tol)
    assert near(out[r, r], (255, 255, 255), tol)


# --- is_image_file ----------------------------------------------------------------------------


def test_suffixes() -> None:
    assert IMAGE_SUFFIXES == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/scan.jpg", True),
        ("a/scan.JPEG", True),
        ("scan.Png", True),
        ("x.bmp", True),
        ("x.TIF", True),
        ("x.tiff", True),
        ("x.gif", False),
        ("x.txt", False),
        ("jpg", False),
        ("a/._scan.jpg", False),  # macOS resource fork
        (".DS_Store", False),
        ("a/.ipynb_checkpoints/scan.png", False),
        (".hidden/scan.png", False),
        ("./a/scan.png", True),
        ("../a/scan.png", True),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(Path(name)) is expected


def test_is_image_file_only_judges_folders_below_root() -> None:
    root = Path("/home/u/.cache/bench/chest")
    assert not is_image_file(root / "a" / "x.png")
    assert is_image_file(root / "a" / "x.png", root=root)
    assert not is_image_file(root / ".trash" / "x.png", root=root)


# --- decoding every kind of file -------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "tol"), [(".jpg", 12), (".png", 0), (".bmp", 0), (".tif", 0)])
def test_rgb_formats(tmp_path: Path, suffix: str, tol: int) -> None:
    path = tmp_path / f"q{suffix}"
    quadrants().save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    out = decode_image(path, 40)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    check_quadrants(out, tol)


def test_returns_writable_array(tmp_path: Path) -> None:
    quadrants().save(tmp_path / "q.png")
    assert decode_image(tmp_path / "q.png", 8).flags.writeable


def test_grayscale_l(tmp_path: Path) -> None:
    Image.new("L", (10, 10), 77).save(tmp_path / "g.png")
    out = decode_image(tmp_path / "g.png", 5)
    assert (out == 77).all()


def test_la_composites_on_black(tmp_path: Path) -> None:
    Image.new("LA", (10, 10), (200, 128)).save(tmp_path / "la.png")
    assert np.abs(decode_image(tmp_path / "la.png", 5).astype(int) - 100).max() <= 1


def test_rgba_composites_on_black(tmp_path: Path) -> None:
    a = np.zeros((10, 20, 4), np.uint8)
    a[:, :10] = (200, 100, 50, 128)  # half transparent
    a[:, 10:] = (255, 255, 255, 0)  # fully transparent white
    Image.fromarray(a).save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png", 20, "pad")
    assert near(out[10, 2], (100, 50, 25), 1)
    assert near(out[10, 17], (0, 0, 0))


def palette_image() -> Image.Image:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([255, 255, 255, *RED, *BLUE] + [0] * (256 - 3) * 3)
    im.paste(1, (0, 0, 10, 20))
    im.paste(2, (10, 0, 20, 20))
    return im


def test_palette(tmp_path: Path) -> None:
    palette_image().save(tmp_path / "p.png")
    out = decode_image(tmp_path / "p.png", 20)
    assert near(out[10, 3], RED) and near(out[10, 16], BLUE)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = palette_image()
    im.paste(0, (0, 0, 20, 5))  # top band: index 0 (white), which is the transparent one
    im.save(tmp_path / "pt.png", transparency=0)
    assert opened(tmp_path / "pt.png", "info").get("transparency") == 0
    out = decode_image(tmp_path / "pt.png", 20)
    assert near(out[1, 10], (0, 0, 0))  # transparent white shows as black
    assert near(out[15, 3], RED) and near(out[15, 16], BLUE)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert opened(tmp_path / "cmyk.jpg", "mode") == "CMYK"
    assert near(decode_image(tmp_path / "cmyk.jpg", 8)[4, 4], (255, 0, 0), 6)


def test_one_bit(tmp_path: Path) -> None:
    im = Image.new("1", (20, 20), 0)
    im.paste(1, (10, 0, 20, 20))
    im.save(tmp_path / "bits.png")
    out = decode_image(tmp_path / "bits.png", 20)
    assert (out[:, :10] == 0).all() and (out[:, 10:] == 255).all()


def gradient(dtype: str, lo: float, hi: float) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, 32), (32, 1)).astype(dtype)


@pytest.mark.parametrize(
    ("suffix", "dtype", "mode"),
    [(".png", "<u2", "I;16"), (".tif", ">u2", "I;16B"), (".tif", "<i4", "I"), (".tif", "<f4", "F")],
)
def test_high_depth_grayscale_stretched_by_own_range(
    tmp_path: Path, suffix: str, dtype: str, mode: str
) -> None:
    # A 12-bit image in a 16-bit container: 0..4095, plus an offset for the non-PNG ones.
    lo = 0 if suffix == ".png" else 1000
    values = gradient(dtype, lo, lo + 4095)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    assert opened(path, "mode") == mode
    out = decode_image(path, 32)  # same size: no resampling, so pixels are exact
    expected = np.rint((values.astype(float) - lo) * 255 / 4095).astype(np.uint8)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_float_tiff_with_nan_and_constant(tmp_path: Path) -> None:
    values = gradient("<f4", -1.5, 2.5)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "f.tif")
    out = decode_image(tmp_path / "f.tif", 32)
    assert out[0, 0, 0] == 0 and out[5, -1, 0] == 255 and out[5, 0, 0] == 0
    Image.fromarray(np.full((8, 8), 3.0, np.float32)).save(tmp_path / "flat.tif")
    assert (decode_image(tmp_path / "flat.tif", 4) == 0).all()


def test_exif_orientation(tmp_path: Path) -> None:
    # Stored 40 wide x 20 tall with a red top-left corner; orientation 6 means "rotate 90
    # degrees clockwise to display", so a viewer shows it 20 wide x 40 tall, red top-right.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:] = BLUE
    a[:10, :10] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rot.jpg", 40, "pad")
    # Displayed 20 x 40 padded into 40 x 40: content in columns 10..30, red at x 20..30, y 0..10.
    assert near(out[4, 25], RED, 25)
    assert near(out[4, 14], BLUE, 25) and near(out[35, 25], BLUE, 25)
    assert near(out[20, 3], (0, 0, 0), 0) and near(out[20, 36], (0, 0, 0), 0)


def test_multiframe_tiff_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    assert opened(tmp_path / "stack.tif", "n_frames") == 3
    assert near(decode_image(tmp_path / "stack.tif", 4)[2, 2], RED)


def test_misnamed_file_is_sniffed_by_content(tmp_path: Path) -> None:
    quadrants().save(tmp_path / "actually_png.jpg", format="PNG")
    check_quadrants(decode_image(tmp_path / "actually_png.jpg", 40), 0)


def test_jpeg_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quadrants(400, 400).save(tmp_path / "big.jpg", quality=95)
    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        result = draft(self, mode, size)
        calls.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    check_quadrants(decode_image(tmp_path / "big.jpg", 40), 12)
    assert calls == [(50, 50)]  # libjpeg decoded at 1/8 scale, still >= 40 on both sides


# --- resize modes -------------------------------------------------------------------------------


def thirds() -> Image.Image:
    """60 x 20: red, green, blue thirds."""
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20], a[:, 20:40], a[:, 40:] = RED, GREEN, BLUE
    return Image.fromarray(a)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_resize_mode_shapes(tmp_path: Path, mode: str) -> None:
    thirds().save(tmp_path / "t.png")
    assert decode_image(tmp_path / "t.png", 30, mode).shape == (30, 30, 3)
    assert decode_image(tmp_path / "t.png", 7, mode).shape == (7, 7, 3)


def test_squash_keeps_everything(tmp_path: Path) -> None:
    thirds().save(tmp_path / "t.png")
    out = decode_image(tmp_path / "t.png", 30, "squash")
    assert near(out[15, 3], RED) and near(out[15, 15], GREEN) and near(out[15, 26], BLUE)
    assert near(out[0, 15], GREEN) and near(out[29, 15], GREEN)  # no bars


def test_pad_keeps_black_bars(tmp_path: Path) -> None:
    thirds().save(tmp_path / "t.png")
    out = decode_image(tmp_path / "t.png", 30, "pad")
    assert (out[:10] == 0).all() and (out[20:] == 0).all()  # 60x20 -> 30x10, centred
    assert near(out[15, 3], RED) and near(out[15, 15], GREEN) and near(out[15, 26], BLUE)


def test_crop_keeps_centre(tmp_path: Path) -> None:
    thirds().save(tmp_path / "t.png")
    out = decode_image(tmp_path / "t.png", 30, "crop")
    assert (out == GREEN).all()


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    thirds().save(tmp_path / "t.png")
    with pytest.raises(ConfigError, match=r"'sqash'.*Did you mean 'squash'"):
        decode_image(tmp_path / "t.png", 30, "sqash")
    with pytest.raises(ConfigError):
        decode_image(tmp_path / "t.png", 0)
    with pytest.raises(ConfigError):
        decode_many([tmp_path / "t.png"], 8, workers=0)


# --- unreadable files ---------------------------------------------------------------------------


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_bad(tmp_path: Path, kind: str) -> Path:
    if kind == "truncated":
        return truncated_jpeg(tmp_path / "cut.jpg")
    path = tmp_path / {"empty": "empty.jpg", "text": "notes.png", "missing": "gone.png"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a picture\n")
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated"),
        ("empty", "empty"),
        ("text", "not an image"),
        ("missing", "no such file"),
    ],
)
def test_unreadable(tmp_path: Path, kind: str, reason: str) -> None:
    path = make_bad(tmp_path, kind)
    with pytest.raises(UnreadableImage) as info:
        decode_image(path, 16)
    err = info.value
    assert isinstance(err, DataError)
    assert err.path == path
    assert reason in err.reason
    assert str(path) in str(err) and err.reason in str(err)


def test_too_large_for_our_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 9_999)
    with pytest.raises(UnreadableImage, match=r"too large: 100 x 100 = 10,000 pixels"):
        decode_image(tmp_path / "big.png", 16)


def test_pillow_decompression_bomb_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow raises above 2x this
    with pytest.raises(UnreadableImage, match="too large") as info:
        decode_image(tmp_path / "big.png", 16)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares its size and stops: enough for Image.open, nothing to decode."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    chunks = (
        struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in (ihdr, idat)
    )
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return path


def bilevel_png(path: Path, width: int, height: int) -> Path:
    """A complete, valid 1-bit PNG of any size, all black: a few KB even at 20000 x 20000."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "none", then the packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    chunks = (b"IHDR" + struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0), b"IDAT" + idat, b"IEND")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in chunks))
    return path


@pytest.mark.parametrize("side", [16_384, 20_000])
def test_a_huge_image_is_refused_from_its_header(tmp_path: Path, side: int) -> None:
    # 16384 x 16384 RGBA took 3.3 GiB and 12 s under the old 2**30 limit; now the header says no.
    path = bilevel_png(tmp_path / "huge.png", side, side)
    assert path.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(UnreadableImage, match="too large: ") as info:
        decode_image(path, 16)
    assert f"{side * side} pixels" in info.value.reason.replace(",", "")
    assert time.perf_counter() - start < 0.5  # no pixel was decoded


def test_the_limit_leaves_room_for_large_medical_images(tmp_path: Path) -> None:
    assert images.MAX_PIXELS == 2**27
    # 11585 x 11585 passes the size check (this header-only file then fails for its missing data).
    with pytest.raises(UnreadableImage) as info:
        decode_image(png_header_only(tmp_path / "big.png", 11_585, 11_585), 16)
    assert "too large" not in info.value.reason
    # A real 8000 x 6000 scan decodes.
    assert decode_image(bilevel_png(tmp_path / "scan.png", 8_000, 6_000), 16).shape == (16, 16, 3)


def test_pillow_bomb_warning_goes_to_the_log_not_the_terminal(tmp_path: Path) -> None:
    path = bilevel_png(tmp_path / "huge.png", 20_000, 20_000)
    code = (f"import logging; logging.basicConfig(level=logging.INFO)\n"
            f"from bench.data.images import decode_many\n"
            f"print(decode_many([{str(path)!r}], 8)[1])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0 and proc.stdout.strip() == "[0]"
    assert "DecompressionBombWarning" not in proc.stderr
    assert f"INFO:bench.data.images:refused {path} as a possible decompression bomb: too large" in proc.stderr


def test_decoding_threads_share_one_pixel_budget() -> None:
    budget = images.PixelBudget(100)
    events: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def big() -> None:
        with budget.hold(80):
            events.append("big in")
            holding.set()
            release.wait(5)
            events.append("big out")

    def second() -> None:
        holding.wait(5)
        with budget.hold(50):  # 80 + 50 > 100: waits for the first to finish
            events.append("second in")
        with budget.hold(10**9):  # more than the whole budget: capped, so it still runs
            events.append("oversized in")

    threads = [threading.Thread(target=big), threading.Thread(target=second)]
    for t in threads:
        t.start()
    holding.wait(5)
    time.sleep(0.2)
    assert events == ["big in"]
    release.set()
    for t in threads:
        t.join(5)
    assert events == ["big in", "big out", "second in", "oversized in"] and budget.free == 100


def test_unreadable_image_pickles(tmp_path: Path) -> None:
    err = pickle.loads(pickle.dumps(UnreadableImage(tmp_path / "x.png", "broken")))
    assert err.path == tmp_path / "x.png" and err.reason == "broken" and "x.png" in str(err)


# --- decode_many --------------------------------------------------------------------------------


def greys(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"g{i:02d}.png")
        Image.new("L", (12, 9), 10 * i + 5).save(paths[-1])
    return paths


@pytest.mark.parametrize("workers", [1, 4])
def test_decode_many_in_order_with_failures(tmp_path: Path, workers: int) -> None:
    paths: list[Path | str] = list(greys(tmp_path, 20))
    paths[3] = make_bad(tmp_path, "empty")
    paths[17] = str(make_bad(tmp_path, "truncated"))
    seen: list[tuple[int, UnreadableImage]] = []
    out, failed = decode_many(paths, 6, workers=workers, on_error=lambda i, e: seen.append((i, e)))
    assert out.shape == (20, 6, 6, 3) and out.dtype == np.uint8
    assert failed == [3, 17]
    assert [i for i, _ in seen] == [3, 17]
    assert seen[0][1].path == paths[3] and seen[1][1].path == Path(paths[17])
    for i in range(20):
        assert (out[i] == (0 if i in failed else 10 * i + 5)).all()


def test_decode_many_writes_into_memmap(tmp_path: Path) -> None:
    paths = greys(tmp_path, 5)
    paths[2] = make_bad(tmp_path, "text")
    cache = tmp_path / "cache.u8"
    mm = np.memmap(cache, dtype=np.uint8, mode="w+", shape=(5, 8, 8, 3))
    mm[:] = 99  # stale pixels from an earlier run must not survive in failed rows
    out, failed = decode_many(paths, 8, "pad", workers=2, out=mm)
    assert out is mm and failed == [2]
    mm.flush()
    del mm, out
    back = np.memmap(cache, dtype=np.uint8, mode="r", shape=(5, 8, 8, 3))
    assert (back[2] == 0).all()
    assert (back[4, 2:6] == 45).all() and (back[4, 0] == 0).all()  # 12x9 padded: bars on top


def test_decode_many_rejects_wrong_out(tmp_path: Path) -> None:
    paths = greys(tmp_path, 2)
    with pytest.raises(ValueError, match="shape"):
        decode_many(paths, 8, out=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        decode_many(paths, 8, out=np.zeros((2, 8, 8, 3), np.float32))


def test_decode_many_empty() -> None:
    out, failed = decode_many([], 8)
    assert out.shape == (0, 8, 8, 3) and failed == []


def test_on_error_exception_stops_decoding(tmp_path: Path) -> None:
    paths = [make_bad(tmp_path, "empty"), *greys(tmp_path, 30)]

    def stop(i: int, err: UnreadableImage) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        decode_many(paths, 8, workers=3, on_error=stop)
