"""COCO RLE in and out of the review API: a checked decode of what a client sends, a fast encode of a crop.

The API carries every mask as a COCO compressed RLE of the whole image (``{"size": [H, W], "counts": str}``,
column-major runs starting with background). A client's string is checked here before pycocotools sees
it: older pycocotools releases decode without bounds checks, and ``area`` trusts the runs whatever they say.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.types import CropMask

#: Longest counts string accepted (a 100-megapixel mask of one-pixel stripes stays well below).
MAX_COUNTS_CHARS = 4_000_000


class RleError(ValueError):
    """An RLE that is not a COCO compressed RLE of the image; the message says what is wrong."""


def parse_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``), checked.

    Each run is a little-endian base-32 number (5 bits a character, 0x20: more characters follow, 0x10 in
    the last one: negative), offset by 48; from the fourth run on, each is a difference to the run two
    before. Decoded with numpy: a mask of many runs costs microseconds, not a Python loop per character.

    Raises:
        RleError: a character outside the alphabet, a truncated or overlong number, or a negative run.
    """
    return _runs(counts).tolist()


def _runs(counts: str) -> np.ndarray:
    if not counts.isascii():
        p = next(i for i, ch in enumerate(counts) if not ch.isascii())
        raise RleError(f"counts: character {counts[p]!r} at {p} is not in the RLE alphabet ('0' to 'o')")
    c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if bad.size:
        p = int(bad[0])
        raise RleError(f"counts: character {counts[p]!r} at {p} is not in the RLE alphabet ('0' to 'o')")
    more = (c & 0x20) != 0
    if more[-1]:
        raise RleError("counts: the string ends inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: no image has that many pixels
        raise RleError("counts: a run longer than any image")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = x.copy()  # runs[i] = x[i] + runs[i - 2] from i = 3 on: running sums over each parity
    if runs.size > 3:
        runs[3::2] = x[1] + np.cumsum(x[3::2])
        if runs.size > 4:
            runs[4::2] = x[2] + np.cumsum(x[4::2])
    neg = np.flatnonzero(runs < 0)
    if neg.size:
        raise RleError(f"counts: run {int(neg[0])} has negative length {int(runs[neg[0]])}")
    return runs


def decode(rle: object, hw: tuple[int, int]) -> CropMask:
    """A client's RLE of an image of size ``hw`` (H, W) as a ``CropMask``.

    Raises:
        RleError: not ``{"size": [H, W], "counts": str}``, another size, or runs that do not cover the image.
    """
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise RleError('expected {"size": [H, W], "counts": "<COCO compressed RLE>"}')
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, list) or size != [int(hw[0]), int(hw[1])]:
        raise RleError(f"size {size!r} is not the image's [{hw[0]}, {hw[1]}] (height, width)")
    if not isinstance(counts, str) or len(counts) > MAX_COUNTS_CHARS:
        raise RleError(f"counts: expected a COCO compressed RLE string of at most {MAX_COUNTS_CHARS} characters")
    total = int(_runs(counts).sum())
    if total != hw[0] * hw[1]:
        raise RleError(f"counts: the runs cover {total} pixels, the image has {hw[0] * hw[1]}")
    full = mask_utils.decode({"size": [int(hw[0]), int(hw[1])], "counts": counts.encode("ascii")})
    return CropMask.from_full(full.astype(bool))


def encode(mask: CropMask | None, hw: tuple[int, int]) -> dict:
    """COCO compressed RLE (str counts) of ``mask`` in an image of size ``hw``; parts outside the image dropped.

    Equal to ``pipeline.masks.mask_to_rle``, but only the columns the crop spans are rasterized (a
    300 px wide object in a 6000 x 4000 image costs 300 columns, not 24 million pixels).
    """
    h, w = int(hw[0]), int(hw[1])
    empty = {"size": [h, w], "counts": _compress([h * w], h, w)}
    if mask is None or mask.area == 0:
        return empty
    x0, y0, x1, y1 = mask.xyxy
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return empty
    band = np.zeros((h, cx1 - cx0), dtype=bool, order="F")
    band[cy0:cy1] = mask.bits[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    flat = band.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)  # runs start with background
    runs[0] += cx0 * h  # the columns left of the band are background, as is the start of its first column
    after = (w - cx1) * h
    if after:
        if len(runs) % 2:  # the band ends in background: it runs on
            runs[-1] += after
        else:
            runs.append(after)
    return {"size": [h, w], "counts": _compress(runs, h, w)}


def _compress(runs: list[int], h: int, w: int) -> str:
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)["counts"].decode("ascii")
