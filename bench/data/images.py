"""Decode image files into fixed-size RGB uint8 arrays, the one input format every model takes.

Medical datasets arrive in every file flavour there is: 16-bit grayscale X-ray PNGs, CMYK
JPEGs from scanned film, palette PNGs with transparency, rotated phone photos, multi-page
TIFFs, and the odd ``._scan.jpg`` left by macOS. This module turns any of them into a
``(size, size, 3)`` uint8 RGB array, or raises :class:`UnreadableImage` naming the file.

Importing this module raises Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` to
:data:`MAX_PIXELS` (2**27) if it is lower, and sends Pillow's DecompressionBombWarning to the
log; see the comment at that constant.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from bench.errors import ConfigError, DataError, close_matches

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "RESIZE_MODES",
    "UnreadableImage",
    "decode_image",
    "decode_many",
    "is_image_file",
    "resize_array",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

# The largest image decoded, checked from the header before any pixel is read. 2**27 pixels
# (134 Mpx, e.g. 11585 x 11585 or 16384 x 8192) is far above any X-ray, CT slice, fundus photo or
# histology tile (whole-slide scans are pyramidal files Pillow cannot open anyway), while bounding
# one image's decode: an RGBA PNG at the limit, the worst case (4 bytes a pixel, then composited
# on black), peaks at 1.7 GiB (measured). The README promises an oversized file is reported and
# skipped, not that it takes the machine down; 2**30 let one file take 3.3 GiB per thread.
# Pillow's own limit is raised to ours if lower (never lowered, and left alone if disabled), so
# Pillow's DecompressionBombError (at twice its limit) only fires for files we refuse anyway.
MAX_PIXELS = 2**27
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow warns in Image.open about any image over its limit, i.e. only about files the header
# check below refuses and reports by path; the warning would only repeat that on the terminal
# without the path, so it goes to the log instead (see _log_refusal).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Pillow's BILINEAR widens its kernel when shrinking, so it averages over the source area
# (no aliasing, unlike the point-sampled bilinear of tf.image/cv2). reducing_gap=3 first
# box-reduces by an integer factor, then resamples: much faster on big images and, per the
# Pillow docs, indistinguishable from the full resample at a gap of 3.
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 3.0

# Formats we let Pillow try, whatever the file is called: scraped datasets often have PNGs
# named .jpg and the like, so we sniff the content. The list is closed so that a file that
# happens to be EPS never gets handed to Ghostscript, or any other exotic plugin run.
_WANTED_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "TIFF", "GIF", "WEBP")


class UnreadableImage(DataError):
    """An image file that cannot be decoded; ``.path`` is the file, ``.reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"Cannot read image {self.path}: {reason}. "
            "Replace the file or remove it from the dataset."
        )

    # Exceptions pickle their args, which here are the message, not (path, reason); this
    # keeps the error intact when it crosses a process boundary (multiprocessing, joblib).
    def __reduce__(self) -> tuple[type[UnreadableImage], tuple[Path, str]]:
        return (type(self), (self.path, self.reason))


def is_image_file(path: Path, root: Path | None = None) -> bool:
    """Whether ``path`` names an image by its suffix, and is not hidden.

    Hidden files (``.DS_Store``, macOS ``._scan.jpg`` resource forks) and anything inside a
    hidden folder (``.ipynb_checkpoints``, ``.Trash``) are not images. Only the name is
    looked at; the disk is not touched.

    Folders are checked in ``path.relative_to(root)`` when ``root`` is given, else in every
    part of ``path`` as given. Pass ``root`` (or relative paths) when walking a dataset that
    may itself live in a hidden folder such as ``~/.cache``, or nothing in it will count.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    parts = path.relative_to(root).parts if root is not None else path.parts
    return not any(part.startswith(".") and part not in (".", "..") for part in parts)


# --- converting every Pillow mode to 8-bit L or RGB ----------------------------------------
# We stop at L for grayscale (most medical images) so resizing works on one channel, not
# three, and only expand to RGB at the very end.


def _keep(im: Image.Image) -> Image.Image:
    return im


def _to_l(im: Image.Image) -> Image.Image:
    return im.convert("L")


def _to_rgb(im: Image.Image) -> Image.Image:
    return im.convert("RGB")


def _on_black(im: Image.Image) -> Image.Image:
    """Composite an LA/RGBA image on black (colour * alpha)."""
    # Black, not white: X-rays, CT, MRI and fundus photos all sit on black, so transparent
    # margins (e.g. from an anonymising tool) then look like the rest of the background.
    base = im.mode[:-1]
    canvas = Image.new(base, im.size, 0)
    canvas.paste(im.convert(base), mask=im.getchannel("A"))
    return canvas


def _alpha_then_on_black(im: Image.Image) -> Image.Image:
    return _on_black(im.convert("LA" if im.mode in ("L", "La") else "RGBA"))


def _stretch_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale to L, scaled by the image's own min and max."""
    # 12- and 16-bit X-rays rarely use their full range (a 12-bit detector stored in 16 bits
    # tops out at 4095), so dividing by 256 would give an almost black image. Stretching each
    # image's min..max to 0..255 keeps all its contrast. A constant image becomes black.
    a = np.asarray(im)
    values = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    f = a.astype(np.float32)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi > lo:
        f -= lo
        f *= 255.0 / (hi - lo)
    else:
        f[...] = 0.0
    f[np.isnan(f)] = 0.0  # +inf/-inf are clipped to white/black below
    np.clip(np.rint(f, out=f), 0.0, 255.0, out=f)
    return Image.fromarray(f.astype(np.uint8))


_TO_8BIT: dict[str, Callable[[Image.Image], Image.Image]] = {
    "L": _keep,
    "RGB": _keep,
    "1": _to_l,  # 0/1 bits to 0/255
    "LA": _on_black,
    "RGBA": _on_black,
    "PA": _alpha_then_on_black,
    "La": _alpha_then_on_black,  # premultiplied; Pillow un-premultiplies, we re-apply
    "RGBa": _alpha_then_on_black,
    "I;16": _stretch_to_l,
    "I;16L": _stretch_to_l,
    "I;16B": _stretch_to_l,
    "I;16N": _stretch_to_l,
    "I": _stretch_to_l,
    "F": _stretch_to_l,
}  # anything else (P, CMYK, YCbCr, RGBX, LAB, HSV): Pillow's own conversion to RGB


def _to_8bit(im: Image.Image) -> Image.Image:
    # A palette, L or RGB image can mark one colour as transparent ("transparency" in
    # info, from a PNG tRNS chunk or a GIF); converting to LA/RGBA turns that into alpha.
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        im = im.convert("LA" if im.mode == "L" else "RGBA")
    return _TO_8BIT.get(im.mode, _to_rgb)(im)


# --- resize modes ---------------------------------------------------------------------------

Resizer = Callable[[Image.Image, int], Image.Image]


def _squash(im: Image.Image, size: int) -> Image.Image:
    # Ignores the aspect ratio, as most published transfer-learning studies do.
    return im.resize((size, size), _RESAMPLE, reducing_gap=_REDUCING_GAP)


def _pad(im: Image.Image, size: int) -> Image.Image:
    # Letterbox: fit the long side, centre, black bars (the usual medical background).
    w, h = im.size
    scale = size / max(w, h)
    fit = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new(im.mode, (size, size), 0)
    canvas.paste(
        im.resize(fit, _RESAMPLE, reducing_gap=_REDUCING_GAP),
        ((size - fit[0]) // 2, (size - fit[1]) // 2),
    )
    return canvas


def _crop(im: Image.Image, size: int) -> Image.Image:
    # Centre square, then resize. Not resize(box=...): that lets the filter reach outside the
    # box, so the edge pixels would pick up what was cropped away.
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return _squash(im.crop((left, top, left + side, top + side)), size)


_RESIZERS: dict[str, Resizer] = {
    "squash": _squash,
    "pad": _pad,
    "crop": _crop,
}
RESIZE_MODES: tuple[str, ...] = tuple(_RESIZERS)


# --- decoding -------------------------------------------------------------------------------


@functools.cache
def _formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format whose plugin isn't registered (e.g. a Pillow
    # built without WebP), so keep only those that are.
    Image.init()
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


def _check_args(size: int, resize: str) -> tuple[int, Resizer]:
    try:
        size = operator.index(size)
    except TypeError:
        raise ConfigError(f"Image size must be a whole number of pixels, not {size!r}.") from None
    if size < 1:
        raise ConfigError(f"Image size must be at least 1 pixel, not {size}.")
    try:
        return size, _RESIZERS[resize]
    except (KeyError, TypeError):
        raise ConfigError(
            f"Unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}."
            + close_matches(str(resize), RESIZE_MODES)
        ) from None


# First match wins, so subclasses come before their bases.
_REASONS: dict[type[BaseException], str] = {
    FileNotFoundError: "no such file",
    IsADirectoryError: "it is a folder, not a file",
    PermissionError: "permission denied",
    Image.DecompressionBombError: "too large: {exc}",
    MemoryError: "out of memory while decoding it",
    EOFError: "the file ends early (truncated?)",
}


def _reason(exc: BaseException, path: Path) -> str:
    """A short human reason for a decode failure."""
    if isinstance(exc, UnidentifiedImageError):
        try:
            if path.stat().st_size == 0:
                return "the file is empty (0 bytes)"
        except OSError:
            pass
        return "not an image Pillow can read (expected JPEG, PNG, BMP or TIFF content)"
    for kind, text in _REASONS.items():
        if isinstance(exc, kind):
            return text.format(exc=exc)
    return str(exc) or type(exc).__name__


class PixelBudget:
    """A counting semaphore over pixels: decoding threads together hold at most ``capacity``.

    One thread per core decodes, so without it a few oversized (but allowed) images decoded at
    once could need several times the memory of one. A request is capped at ``capacity``, so
    one image always fits; small images (the usual case) still decode side by side.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(pixels, 0), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= need)
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


_BUDGET = PixelBudget(MAX_PIXELS)


def _decode_pil(path: Path, size: int, resizer: Resizer) -> Image.Image:
    with Image.open(path, formats=_formats()) as im:  # reads the header only
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise UnreadableImage(
                path, f"too large: {w} x {h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}"
            )
        with _BUDGET.hold(w * h):
            return _decode_opened(im, size, resizer)


def _decode_opened(im: Image.Image, size: int, resizer: Resizer) -> Image.Image:
    if isinstance(im, JpegImagePlugin.JpegImageFile):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying >= size on both
        # sides (so every resize mode still has enough pixels): about twice as fast.
        im.draft("RGB", (size, size))
    im.load()  # multi-frame files (TIFF stacks) load frame 0, where open() leaves them
    # Phones and some scanners store pixels as captured plus an orientation tag; rotate
    # so the array is what a viewer shows. The pixels have loaded fine by now, so broken
    # EXIF metadata is no reason to lose the image: keep it as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(im, in_place=True)
    small = resizer(_to_8bit(im), size)
    return small if small.mode == "RGB" else small.convert("RGB")


def _decode_checked(path: Path, size: int, resizer: Resizer) -> Image.Image:
    try:
        return _decode_pil(path, size, resizer)
    except UnreadableImage as err:
        _log_refusal(err)
        raise
    # Deliberately broad: Pillow's plugins raise OSError, SyntaxError, struct.error,
    # IndexError, ValueError, EOFError and more on malformed files, and a caller decoding
    # 100k files needs one exception type to catch. The original stays as __cause__.
    except Exception as exc:
        err = UnreadableImage(path, _reason(exc, path))
        _log_refusal(err)
        raise err from exc


def _log_refusal(err: UnreadableImage) -> None:
    # Where Pillow's DecompressionBombWarning would have gone (it is filtered, see MAX_PIXELS).
    if err.reason.startswith("too large"):
        log.info("refused %s as a possible decompression bomb: %s", err.path, err.reason)


def decode_image(path: Path, size: int, resize: str = "squash") -> np.ndarray:
    """Decode one image file into a ``(size, size, 3)`` uint8 RGB array.

    ``resize`` is one of :data:`RESIZE_MODES`: ``squash`` (stretch to a square, ignoring the
    aspect ratio), ``pad`` (fit inside the square, black bars) or ``crop`` (centre square).
    EXIF orientation is applied; alpha is composited on black; 16-bit and float grayscale
    are stretched from the image's own min..max to 0..255; multi-frame files give frame 0.

    Raises :class:`UnreadableImage` for any file that cannot be decoded (missing, empty,
    truncated, not an image, too large), and ``ConfigError`` for a bad ``size``/``resize``.
    """
    size, resizer = _check_args(size, resize)
    return np.array(_decode_checked(Path(path), size, resizer))


def resize_array(pixels: np.ndarray, size: int, resize: str = "squash") -> np.ndarray:
    """An image already in memory as a ``(size, size, 3)`` uint8 RGB array, resized like a file.

    ``pixels`` is uint8 ``(h, w)`` or ``(h, w, 1)`` grayscale or ``(h, w, 3)`` RGB, as npz
    datasets (MedMNIST) store them. An image that is already ``size`` square is returned as
    stored, pixel for pixel; any other is resized with the same filter and ``resize`` mode as
    :func:`decode_image`, grayscale staying one channel until the end.
    """
    size, resizer = _check_args(size, resize)
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        # The caller checks the arrays it reads (and names the file); this is a programming error.
        raise ValueError(f"expected uint8 (h, w) or (h, w, 3) pixels, got {a.dtype} {a.shape}")
    if a.shape[:2] != (size, size):
        a = np.asarray(resizer(Image.fromarray(np.ascontiguousarray(a)), size))
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def _default_workers() -> int:
    # CPUs this process may run on (respects taskset/affinity, unlike os.cpu_count()).
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def decode_many(
    paths: Sequence[Path | str],
    size: int,
    resize: str = "squash",
    *,
    workers: int | None = None,
    on_error: Callable[[int, UnreadableImage], None] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode ``paths`` in order into an ``(n, size, size, 3)`` uint8 array.

    Returns ``(array, failed)``: ``failed`` lists, ascending, the indices of files that
    raised :class:`UnreadableImage`; their rows are zeros. ``on_error(index, error)`` is
    called for each failure, in index order, in the calling thread; if it raises, decoding
    stops and the exception propagates.

    ``out``, if given, must be a writable ``(n, size, size, 3)`` uint8 array (e.g. an
    ``np.memmap`` opened ``w+``/``r+``); rows are written straight into it and it is
    returned, so a disk cache never needs a second copy in memory.

    ``workers`` threads decode in parallel (default: one per available CPU, at most 32);
    Pillow releases the GIL while decoding and resizing. ``workers=1`` decodes in the
    calling thread.
    """
    size, resizer = _check_args(size, resize)
    n = len(paths)
    shape = (n, size, size, 3)
    if out is None:
        dest = np.zeros(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.writeable:
        # A programming error in the caller, not a user mistake: keep the traceback.
        raise ValueError(
            f"out must be a writable uint8 array of shape {shape}, "
            f"got {out.dtype} {out.shape}{'' if out.flags.writeable else ' (read-only)'}"
        )
    else:
        dest = out
    if workers is None:
        workers = _default_workers()
    elif workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}.")

    def decode_row(i: int) -> UnreadableImage | None:
        try:
            dest[i] = np.asarray(_decode_checked(Path(paths[i]), size, resizer))
        except UnreadableImage as err:
            dest[i] = 0  # `out` may be a reused cache file holding old pixels
            return err
        return None

    failed: list[int] = []

    def record(i: int, err: UnreadableImage | None) -> None:
        if err is not None:
            failed.append(i)
            if on_error is not None:
                on_error(i, err)

    if workers == 1 or n <= 1:
        for i in range(n):
            record(i, decode_row(i))
        return dest, failed

    # Keep only a few tasks per thread in flight rather than submitting all n at once, so
    # Ctrl-C or an exception from on_error stops within a few images instead of after all.
    window = 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-decode") as pool:
        pending: deque[tuple[int, Future[UnreadableImage | None]]] = deque()
        next_i = 0
        try:
            while next_i < n or pending:
                while next_i < n and len(pending) < window:
                    pending.append((next_i, pool.submit(decode_row, next_i)))
                    next_i += 1
                i, future = pending.popleft()
                record(i, future.result())
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
    return dest, failed
