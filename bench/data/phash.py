"""Shift-tolerant perceptual hashes: one image's pHash against another's under small shifts and crops.

A pHash (the signs of an image's lowest 16 x 16 DCT frequencies against their median) survives
re-encoding and resizing, but not a shift: on the 976 shared X-rays (128 px), a 1-pixel shift
moved the plain hash (imagehash's, which bench used before) by up to 28 of 256 bits (36
diagonally), 2 px by up to 48 (64), 3 px by up to 64 (90) and a 5% crop by up to 102, while two
different patients came as close as 40. Consecutive video frames are exactly such shifts.

So each image is hashed in ``VARIANTS`` windows: a centred window (``MARGIN`` of the side off
each edge, so content that a shift moves in or out at the border is not hashed) and the same
window moved by ``OFFSETS`` (up to 2.3% of the side, 3 px at 128 px, in steps of 1.2%) in x and
y, at full size and shrunk by ``SCALES`` (what a 5% crop looks like). The distance of two images
is the smallest Hamming distance between either one's centred hash and any window of the other.

Measured on the 976 shared X-rays (tests/data/pneumonia, decoded at 32, 64, 128 and 224 px;
copies made from the 128 px files of 150 of them, the shifted-in border repeating its edge):
no two images of different patients came closer than 40 bits (0.01% of those pairs within 48,
the median 98), while shifts of 1, 2 and 3 px (in x, and diagonally) stayed within 20 bits, 5%
crops (centred, at a corner, or a quarter of the way, resized back) within 26, 4% and 6% crops
within 22, JPEG re-encoding at quality 70 within 10 and resizing to 3/4 within 6. The default
threshold, 32 (``bench.data.spec.DEFAULT_NEAR_THRESHOLD``), sits in the middle of that gap.

Cost: 50 windows make the comparison 50 times the plain hash's, n x n x 50 products of 256
signs (``shift_pairs``, in blocks of a few tens of MB): 0.9-1.3 s for the 976 X-rays and 117 s
for 10,000 images on two busy cores; hashing is 1-4 s per 1,000 images (32-224 px).

Everything is linear up to the sign (grey conversion, the resampling of each window to 64 x 64
with a triangle filter, the DCT), so all windows of a batch of images are two matrix products;
no image library is called per window.
"""

from __future__ import annotations

import numpy as np

HASH_SIZE = 16  # DCT frequencies per axis: HASH_SIZE**2 bits per window
HASH_BITS = HASH_SIZE * HASH_SIZE
WORK = 64  # each window is resampled to WORK x WORK before the DCT (imagehash's pHash does the same)
MARGIN = 0.06  # of the side, off each edge of the centred window: more than any shift hashed
OFFSETS = (-0.0234, -0.0117, 0.0, 0.0117, 0.0234)  # window shifts, fractions of the side (1.5 px at 128)
SCALES = (1.0, 0.95)  # window sizes relative to the centred one: 0.95 matches a 5% crop
# (scale, dy, dx) per variant; the first is the centred window every other image is compared with.
WINDOWS = ((1.0, 0.0, 0.0),) + tuple((s, dy, dx) for s in SCALES for dy in OFFSETS for dx in OFFSETS
                                     if (s, dy, dx) != (1.0, 0.0, 0.0))
VARIANTS = len(WINDOWS)
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L"
_CHUNK = 256  # images hashed at a time: a chunk's float copy stays ~50 MB at 224 px
_ROWS = 256  # images compared at a time against a column chunk
_COLUMNS = 1024  # images whose windows are compared at a time: (_ROWS, _COLUMNS * VARIANTS) floats


def _resample(side: int, start: float, stop: float) -> np.ndarray:
    """(WORK, side): a triangle filter averaging pixels [start, stop) into WORK samples (antialiased)."""
    scale = (stop - start) / WORK
    support = max(1.0, scale)  # widen the filter when shrinking, as PIL does
    centres = start + (np.arange(WORK) + 0.5) * scale
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(side)[None, :] + 0.5 - centres[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


def _dct_rows() -> np.ndarray:
    """(HASH_SIZE, WORK): the lowest DCT-II frequencies (unnormalised; the sign test needs no scale)."""
    k, x = np.arange(HASH_SIZE)[:, None], np.arange(WORK)[None, :]
    return np.cos(np.pi * k * (2 * x + 1) / (2 * WORK))


def _projections(side: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One stacked (windows' 1-D projections, side) matrix, and per variant its (row block, column block).

    A window's coefficients are P_y @ grey @ P_x.T, with P = DCT @ resample over the window's span
    along that axis; every (scale, offset) span is one block of HASH_SIZE rows.
    """
    dct = _dct_rows()
    spans: dict[tuple[float, float], int] = {}  # (scale, offset) -> block number
    blocks = [(spans.setdefault((scale, dy), len(spans)), spans.setdefault((scale, dx), len(spans)))
              for scale, dy, dx in WINDOWS]
    rows = []
    for (scale, offset) in spans:  # insertion order = block number
        half = (1 - 2 * MARGIN) * scale / 2
        rows.append(dct @ _resample(side, (0.5 - half + offset) * side, (0.5 + half + offset) * side))
    return np.concatenate(rows).astype(np.float32), blocks


def shift_hashes(images: np.ndarray) -> np.ndarray:
    """(n, VARIANTS, HASH_BITS) bool: each image's pHash in every window of ``WINDOWS`` (the first centred).

    ``images``: (n, side, side, 3) uint8 rows of the image cache, any side.
    """
    n, side = len(images), images.shape[1]
    proj, blocks = _projections(side)
    k = len(proj)
    out = np.zeros((n, VARIANTS, HASH_BITS), dtype=bool)
    for start in range(0, n, _CHUNK):
        grey = np.asarray(images[start:start + _CHUNK], dtype=np.float32) @ _GREY  # (c, side, side)
        c = len(grey)
        across = (grey.reshape(c * side, side) @ proj.T).reshape(c, side, k)  # every x-projection
        both = (proj @ across.transpose(1, 0, 2).reshape(side, c * k)).reshape(k, c, k).transpose(1, 0, 2)
        for v, (by, bx) in enumerate(blocks):
            coef = both[:, by * HASH_SIZE:(by + 1) * HASH_SIZE, bx * HASH_SIZE:(bx + 1) * HASH_SIZE].reshape(c, -1)
            out[start:start + c, v] = coef > np.median(coef, axis=1, keepdims=True)
    return out


def _signs(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.float32) * 2 - 1


def _blocks(centred: np.ndarray, windows: np.ndarray):
    """Yield ``(row, col, d)``: d[r, c] is centred hash ``row + r``'s smallest distance to any window of image ``col + c``.

    Distances are products of +-1 vectors (bits - 2 x distance), exact in float32 at these sizes;
    the largest product over an image's windows is its smallest distance. Columns are the outer
    loop so each chunk of windows is converted once.
    """
    a = _signs(centred)
    for col in range(0, len(windows), _COLUMNS):
        cols = windows[col:col + _COLUMNS]
        b = _signs(cols.reshape(-1, HASH_BITS))
        for row in range(0, len(a), _ROWS):
            best = (a[row:row + _ROWS] @ b.T).reshape(-1, len(cols), VARIANTS).max(axis=2)
            yield row, col, np.rint((HASH_BITS - best) / 2).astype(np.int64)


def _one_way(centred: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(len(centred), len(windows)) int: each centred hash's smallest distance to any window of each image."""
    out = np.empty((len(centred), len(windows)), dtype=np.int64)
    for row, col, d in _blocks(centred, windows):
        out[row:row + d.shape[0], col:col + d.shape[1]] = d
    return out


def shift_distance(hashes: np.ndarray, rows: np.ndarray | slice, to: np.ndarray | None = None) -> np.ndarray:
    """Shift-tolerant distances (int bits) between ``hashes[rows]`` and every image of ``to`` (default all).

    Symmetric: the smaller of "my centred hash against your windows" and the reverse.
    """
    mine = hashes[rows]
    theirs = hashes if to is None else to
    return np.minimum(_one_way(mine[:, 0], theirs), _one_way(theirs[:, 0], mine).T)


def shift_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with i < j for every pair of images within ``threshold`` bits under some shift.

    One direction over all ordered pairs covers both (i's centred hash against j's windows, and
    j's against i's), so each comparison is made once: n x n x VARIANTS products in blocks.
    """
    found_i, found_j = [], []
    for row, col, d in _blocks(hashes[:, 0], hashes):
        i, j = np.nonzero(d <= threshold)
        i, j = i + row, j + col
        found_i.append(np.minimum(i, j)[i != j])
        found_j.append(np.maximum(i, j)[i != j])
    if not found_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.unique(np.stack([np.concatenate(found_i), np.concatenate(found_j)]), axis=1)
    return pairs[0], pairs[1]
