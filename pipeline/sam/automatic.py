"""SAM's automatic mask generator on samlabel's SAM stage: a grid of point prompts -> every object of an image.

What segment-anything's ``SamAutomaticMaskGenerator`` does (the parameters and defaults are its own), on
:class:`pipeline.sam.Segmenter`: the image is encoded once (``set_image``; an image the segmenter has just
encoded is not encoded again), the grid's points are decoded in batches with SAM's three candidate masks
per point (on CPU the ONNX point decoder, :mod:`pipeline.sam.point_decoder`: the image-side work shared by
the prompts of a decoder call), and the candidates go through:

1. ``mask_score > pred_iou_thresh`` (SAM's predicted IoU);
2. stability ``>= stability_thresh``: the IoU of the mask thresholded at logit ``+offset`` and at ``-offset``,
   at image resolution. A cheap low-resolution bound drops the candidates that cannot reach the threshold
   (each image pixel is a convex mix of a few low-res logits, so it lies between their min and max); the
   rest are measured exactly on the window their mask can reach, computing only the pixels that bound leaves
   unsure (:meth:`Resampler.stable_mask`: the same bits and areas as upsampling the whole window);
3. masks whose box lies within ``EDGE_TOLERANCE`` pixels of a crop's edge are dropped (an object cut by the
   crop), unless that edge is the image's;
4. box NMS within each crop (``box_nms_thresh``), then across crops preferring the smaller crop
   (``crop_nms_thresh``), then, with ``min_region_area``, holes and islands below that area are removed and a
   box NMS prefers the masks that did not change.

Masks are ``CropMask`` (run-length encoded in their tight box) from the moment they pass the thresholds; a
mask that a better, overlapping one will suppress in the box NMS is given up at once (its box and score kept;
:class:`Survivors`), and logits are held for one batch of points at a time, so memory per image follows the
number of objects, not the grid.

``covered`` (instances the image already has, e.g. the detector's) lets the generator skip the grid points
that fall inside their masks: such a point is answered with the object that is already there (or a part of
it), never with one that is missing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pipeline.config import GeneratorOptions
from pipeline.masks import CropMask
from pipeline.types import Instances

LOGGER = logging.getLogger(__name__)

#: Pixels within which a mask's box counts as touching a crop's edge (segment-anything's ``atol``).
EDGE_TOLERANCE = 20.0
_SLACK = 1e-4
#: Above this share of a window's low-res pixels unsure, :meth:`Resampler.stable_mask` computes the whole window.
_DENSE_SHARE = 0.1


# ------------------------------------------------------------------------------------------- pure geometry
def point_grid(n: int) -> np.ndarray:
    """float (n*n, 2): the (x, y) centres of an n x n grid of cells over [0, 1]^2, row by row (x fastest)."""
    side = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def crop_boxes(hw: tuple[int, int], layers: int, overlap_ratio: float) -> list[tuple[tuple[int, int, int, int], int]]:
    """The crops of an (H, W) image as ``((x0, y0, x1, y1), layer)``, x1 / y1 exclusive; the image itself first.

    Layer ``k >= 1`` tiles the image with ``2**k`` x ``2**k`` crops overlapping by
    ``int(overlap_ratio * short_side * 2 / 2**k)`` pixels (segment-anything's ``generate_crop_boxes``).
    """
    h, w = hw
    out = [((0, 0, w, h), 0)]
    short = min(h, w)
    for layer in range(1, layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * (2 / n))
        cw, ch = math.ceil((overlap * (n - 1) + w) / n), math.ceil((overlap * (n - 1) + h) / n)
        for x0 in (int((cw - overlap) * i) for i in range(n)):
            for y0 in (int((ch - overlap) * i) for i in range(n)):
                out.append(((x0, y0, min(x0 + cw, w), min(y0 + ch, h)), layer))
    return out


def nms_boxes(masks: Sequence[CropMask | None]) -> np.ndarray:
    """float32 (N, 4): each mask's box with inclusive max corner (the first and last pixel's indices), the box
    segment-anything's NMS and crop-edge test use. An empty mask (or none) gives (0, 0, 0, 0)."""
    out = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        if m is not None and m.area:
            x0, y0, x1, y1 = m.xyxy
            out[i] = (x0, y0, x1 - 1, y1 - 1)
    return out


def box_nms(xyxy: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS: indices kept, best score first (ties in input order); a box whose IoU with a kept, better box
    is above ``iou_thresh`` is dropped. Areas are ``(x1 - x0) * (y1 - y0)``, as ``torchvision.ops.nms``."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    x0, y0, x1, y1 = xyxy.T
    areas = (x1 - x0) * (y1 - y0)
    alive = np.ones(len(xyxy), dtype=bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        iw = np.clip(np.minimum(x1, x1[i]) - np.maximum(x0, x0[i]), 0, None)
        ih = np.clip(np.minimum(y1, y1[i]) - np.maximum(y0, y0[i]), 0, None)
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas + areas[i] - inter)
        alive &= ~(iou > iou_thresh)
    return np.array(keep, dtype=np.int64)


def near_crop_edge(
    xyxy: np.ndarray, crop: tuple[int, int, int, int], hw: tuple[int, int], *, tolerance: float = EDGE_TOLERANCE
) -> np.ndarray:
    """bool (N,): boxes (``nms_boxes`` form, image pixels) within ``tolerance`` of an edge of ``crop`` that is not
    also the image's edge: objects the crop cuts, which a larger crop sees whole."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    crop_box = np.asarray(crop, dtype=np.float64)
    image_box = np.array([0, 0, hw[1], hw[0]], dtype=np.float64)
    near_crop = np.abs(boxes - crop_box) <= tolerance
    near_image = np.abs(boxes - image_box) <= tolerance
    return np.asarray((near_crop & ~near_image).any(axis=1))


def remove_small_regions(mask: CropMask, min_area: int, hw: tuple[int, int]) -> tuple[CropMask, bool]:
    """``mask`` with its holes, then its islands, of fewer than ``min_area`` pixels removed (8-connectivity),
    and whether it changed. The largest island is kept even when every island is small.

    As segment-anything's ``remove_small_regions`` on the full (H, W) image, computed on the mask's box: a
    background region that reaches the box's edge continues outside it, where the image minus the box is one
    region or (a box spanning the image's width or height) two, whose sizes are added (when such a region is
    small, which happens only where the box nearly fills the image, the holes are filled on the whole image).
    """
    if min_area <= 0 or mask.area == 0:
        return mask, False
    filled, holes = _fill_small_holes(mask, min_area, hw)
    bits = filled.bits
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bits.view(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < min_area
    if not small.any():
        return filled, holes
    keep = np.flatnonzero(~small) + 1
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    out = CropMask.from_full(np.isin(labels, keep))
    return _shift(out, filled.x0, filled.y0), True


def _fill_small_holes(mask: CropMask, min_area: int, hw: tuple[int, int]) -> tuple[CropMask, bool]:
    H, W = hw
    bits = mask.bits
    h, w = bits.shape
    x0, y0 = mask.x0, mask.y0
    top, left, bottom, right = int(y0 > 0), int(x0 > 0), int(y0 + h < H), int(x0 + w < W)
    background = np.pad(~bits, ((top, bottom), (left, right)), constant_values=True)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(background.view(np.uint8), connectivity=8)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    # The padding is the outside of the box, all background: one region of the image (H * W - h * w pixels),
    # or two when the box spans the image's width (above, below) or height (left, right).
    if not (left or right) or not (top or bottom):
        spans_width = not (left or right)
        first = (labels[0, :], y0 * W) if spans_width else (labels[:, 0], x0 * H)
        last = (labels[-1, :], (H - y0 - h) * W) if spans_width else (labels[:, -1], (W - x0 - w) * H)
        pieces = [p for p, padded in zip((first, last), (top or left, bottom or right), strict=True) if padded]
        sides = [(int(side[0]), int(size - side.size)) for side, size in pieces]
    else:
        ring = np.ones(background.shape, dtype=bool)
        ring[top : top + h, left : left + w] = False
        sides = [(int(labels[ring][0]), H * W - h * w - int(ring.sum()))]
    for label, outside in sides:  # each side of the padding is all background, so in one region
        sizes[label] += outside
    small = np.flatnonzero(sizes[1:] < min_area) + 1
    if small.size == 0:
        return mask, False
    if np.isin(small, [label for label, _ in sides]).any():  # a small region outside the box: fill on the image
        full = mask.full(hw)
        n, labels, stats, _ = cv2.connectedComponentsWithStats((~full).view(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
        return CropMask.from_full(full | np.isin(labels, small)), True
    inner = labels[top : top + h, left : left + w]
    return _shift(CropMask(bits | np.isin(inner, small)), x0, y0), True


def _tight(bits: np.ndarray, dx: int, dy: int) -> CropMask:
    """``CropMask.from_full(bits)`` moved by (dx, dy), encoded once."""
    rows, cols = np.flatnonzero(bits.any(axis=1)), np.flatnonzero(bits.any(axis=0))
    if rows.size == 0:
        return CropMask(np.zeros((0, 0), dtype=bool))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return CropMask(bits[y0:y1, x0:x1], x0 + dx, y0 + dy)


def _shift(mask: CropMask, dx: int, dy: int) -> CropMask:
    """``mask`` moved by (dx, dy) pixels, without decoding it."""
    if mask.area == 0:
        return mask
    data = mask.to_json()
    assert data is not None  # not empty
    return CropMask.from_json({**data, "x0": data["x0"] + dx, "y0": data["y0"] + dy})


# ------------------------------------------------------------------------------------------- candidates
class StabilityBound:
    """Bounds of each candidate's stability score at image resolution, from its low-res logits alone.

    Every image pixel is a convex mix of the low-res logits on a span of at most ``S`` rows and ``S`` columns
    (bilinear resizes: ``S`` = 2 or 3), so it lies between their min and max: a pixel whose span's min is above a
    threshold is above it, one whose max is not, is not. Counting the image pixels of each span (``count_y``,
    ``count_x``) gives lower and upper bounds of both areas of the stability score from the span's min and max
    (:meth:`pooled`, computed once for every threshold).
    """

    def __init__(self, upsampler) -> None:
        self.profile = upsampler.profile
        ry, rx = upsampler.ry.cpu(), upsampler.rx.cpu()
        self.count_y, span_y = self._counts(ry)
        self.count_x, span_x = self._counts(rx)
        self.span = max(span_y, span_x)
        self._cy, self._cx = self.count_y.numpy(), self.count_x.numpy().astype(np.float32)  # pixels per low-res index

    @staticmethod
    def _counts(matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
        nz = matrix != 0
        first = nz.float().argmax(dim=1)
        last = matrix.shape[1] - 1 - nz.flip(1).float().argmax(dim=1)
        counts = torch.bincount(first, minlength=matrix.shape[1]).double()
        return counts, int((last - first).max()) + 1

    def values(self, logits: torch.Tensor) -> np.ndarray:
        """float32 (K, L, L): what is upsampled (:meth:`Profile.upsample_values`), as numpy."""
        return np.ascontiguousarray(self.profile.upsample_values(logits.float().cpu()).numpy())

    def pooled(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) float32 (K, L, L): the min and max of ``values`` on the span (``S`` x ``S`` low-res pixels,
        clamped at the far edges) that starts at each low-res pixel: every image pixel whose span starts there
        lies between them."""
        lo, hi = values, values
        for axis in (1, 2):
            lo, hi = _span_reduce(lo, self.span, axis, np.minimum), _span_reduce(hi, self.span, axis, np.maximum)
        return lo, hi

    def _area(self, above: np.ndarray) -> np.ndarray:
        """float64 (K,): the image pixels of the spans marked in ``above`` (K, L, L) (integer sums, exact)."""
        return (above.astype(np.float32) @ self._cx).astype(np.float64) @ self._cy

    def areas(self, logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 (K,) lower and upper bounds of the image-resolution area of ``logits`` (K, L, L) > threshold."""
        lo, hi = self.pooled(self.values(logits))
        t = self.profile.upsample_threshold(float(threshold))
        # the slack covers the float rounding of the image-resolution product (a mix may land an ulp outside)
        return torch.from_numpy(self._area(lo > t + _SLACK)), torch.from_numpy(self._area(hi > t - _SLACK))

    def may_pass(self, logits: torch.Tensor, threshold: float, offset: float, stability_thresh: float) -> np.ndarray:
        """bool (K,): candidates whose stability can reach ``stability_thresh`` (the others cannot)."""
        out = []
        for start in range(0, len(logits), 16):  # bounded temporaries: 16 x L^2 per map
            lo, hi = self.pooled(self.values(logits[start : start + 16]))
            out.append(self.may_pass_pooled(lo, hi, threshold, offset, stability_thresh))
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)

    def may_pass_pooled(
        self, lo: np.ndarray, hi: np.ndarray, threshold: float, offset: float, stability_thresh: float
    ) -> np.ndarray:
        """:meth:`may_pass` given the :meth:`pooled` maps."""
        t_hi = self.profile.upsample_threshold(float(threshold + offset))
        t_lo = self.profile.upsample_threshold(float(threshold - offset))
        hi_upper = self._area(hi > t_hi - _SLACK)
        lo_lower, lo_upper = self._area(lo > t_lo + _SLACK), self._area(hi > t_lo - _SLACK)
        return (lo_upper > 0) & (hi_upper >= stability_thresh * lo_lower)


def _span_reduce(x: np.ndarray, span: int, axis: int, op) -> np.ndarray:
    """``op`` over ``x[..., j : j + span, ...]`` along ``axis`` at each ``j`` (the window clamped at the end)."""
    out = x.copy()
    n = x.shape[axis]
    for d in range(1, span):
        head, tail = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        head[axis], tail[axis] = slice(0, n - d), slice(d, n)
        op(out[tuple(head)], x[tuple(tail)], out=out[tuple(head)])
    return out


class Resampler:
    """The upsampler's bilinear resize as a few taps per image row and column, for many candidates of one image.

    ``Upsampler`` multiplies by dense (H, L) and (W, L) matrices, which for a 1080p image costs ~0.6 GFLOP per
    mask; here each image row (column) reads its ``K`` <= 3 low-res rows (columns) with their weights: the same
    sums, in another order (values agree to ~1e-6), at ~2K multiply-adds per pixel of the mask's window.
    """

    def __init__(self, upsampler) -> None:
        self.profile = upsampler.profile
        self.rows = _Taps(upsampler.ry.cpu().numpy())
        self.cols = _Taps(upsampler.rx.cpu().numpy())

    def masks(self, logits: torch.Tensor, thresholds: tuple[float, ...]) -> list[tuple[np.ndarray, int, int]]:
        """For each logit threshold, ``(bits, x0, y0)``: the image pixels above it on the window the lowest one
        can reach (bits may have empty margins; empty (0, 0) bits when nothing is above)."""
        values = self.profile.upsample_values(logits.float().cpu()).numpy()
        ts = [self.profile.upsample_threshold(float(t)) for t in thresholds]
        positive = values > min(ts)
        rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if rows.size == 0:
            return [(np.zeros((0, 0), dtype=bool), 0, 0)] * len(ts)
        y0, y1 = self.rows.window(rows[0], rows[-1])
        x0, x1 = self.cols.window(cols[0], cols[-1])
        window = self.rows.apply(self.cols.apply(values, x0, x1, axis=1), y0, y1, axis=0)
        return [(window > t, x0, y0) for t in ts]

    def stable_mask(
        self, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, thresholds: tuple[float, ...]
    ) -> tuple[np.ndarray, int, int, list[int]]:
        """:meth:`masks`' first mask and the areas of all, computing image pixels only where the span bounds
        (``lo`` / ``hi`` of :meth:`StabilityBound.pooled`) do not tell their side of a threshold.

        A pixel whose span's min is above every threshold (with a slack for float rounding) is in every mask,
        one whose span's max is below them all is in none; the others (the band along the mask's outline) are
        computed with the same taps, in the same order, as :meth:`masks`: the same bits and areas.

        Args:
            values: float32 (L, L) one candidate's upsampled values (:meth:`StabilityBound.values`).
            lo, hi: float32 (L, L) its span bounds.
            thresholds: in the units of ``values`` (:meth:`Profile.upsample_threshold`).

        Returns:
            (bits, x0, y0, areas): the pixels above ``thresholds[0]`` on a window at (x0, y0) (empty (0, 0)
            bits when no pixel is above any threshold), and the number of pixels above each threshold.
        """
        t_min, t_max = min(thresholds), max(thresholds)
        positive = values > t_min
        rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if rows.size == 0:
            return np.zeros((0, 0), dtype=bool), 0, 0, [0] * len(thresholds)
        y0, y1 = self.rows.window(rows[0], rows[-1])
        x0, x1 = self.cols.window(cols[0], cols[-1])
        fy, fx = self.rows.index[y0:y1, 0], self.cols.index[x0:x1, 0]  # the span each pixel reads starts here
        lo, hi = lo[fy[0] : fy[-1] + 1, fx[0] : fx[-1] + 1], hi[fy[0] : fy[-1] + 1, fx[0] : fx[-1] + 1]
        slack = _SLACK + 1e-6 * float(np.abs(values).max())  # float rounding of a mix, relative to the values
        inside = lo > t_max + slack
        code = inside.view(np.uint8) | ((~inside & (hi > t_min - slack)).view(np.uint8) << 1)  # 1 in, 2 unsure
        if np.count_nonzero(code >> 1) > _DENSE_SHARE * code.size:  # a ragged outline: the whole window is cheaper
            window = self.rows.apply(self.cols.apply(values, x0, x1, axis=1), y0, y1, axis=0)
            return window > thresholds[0], x0, y0, [int(np.count_nonzero(window > t)) for t in thresholds]
        code = code[fy - fy[0]][:, fx - fx[0]]
        py, px = np.nonzero(code >> 1)
        exact = self._values_at(values, py + y0, px + x0)
        bits = code == 1
        bits[py, px] = exact > thresholds[0]
        n_inside = int(np.bincount(fy - fy[0]) @ inside.astype(np.int64) @ np.bincount(fx - fx[0]))
        return bits, x0, y0, [n_inside + int(np.count_nonzero(exact > t)) for t in thresholds]

    def _values_at(self, values: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """float32 (n,): image pixels (ys, xs), summed as :meth:`_Taps.apply` sums them (columns, then rows)."""
        iy, wy = self.rows.index[ys], self.rows.weight[ys]
        ix, wx = self.cols.index[xs], self.cols.weight[xs]
        out = 0
        for a in range(iy.shape[1]):
            row = 0
            for b in range(ix.shape[1]):
                row = row + values[iy[:, a], ix[:, b]] * wx[:, b]
            out = out + row * wy[:, a]
        return np.asarray(out, dtype=np.float32).reshape(-1)


class _Taps:
    """A resize matrix (out, L) as taps: output ``o`` = sum over k of ``weight[o, k] * input[index[o, k]]``."""

    def __init__(self, matrix: np.ndarray) -> None:
        nz = matrix != 0
        lowres = matrix.shape[1]
        first = nz.argmax(axis=1)
        last = lowres - 1 - nz[:, ::-1].argmax(axis=1)
        k = int((last - first).max()) + 1
        index = first[:, None] + np.arange(k)
        valid = index <= last[:, None]
        self.index = np.minimum(index, lowres - 1)
        self.weight = np.where(valid, matrix[np.arange(len(matrix))[:, None], self.index], 0).astype(np.float32)
        reads = nz.any(axis=0)  # low-res index -> first / last output that reads it (none: padding)
        self.first_out = np.where(reads, nz.argmax(axis=0), len(matrix))
        self.last_out = np.where(reads, len(matrix) - 1 - nz[::-1].argmax(axis=0), -1)

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """The outputs that read any of the low-res indices ``lo..hi``, as [start, stop)."""
        return int(self.first_out[lo : hi + 1].min()), int(self.last_out[lo : hi + 1].max()) + 1

    def apply(self, values: np.ndarray, start: int, stop: int, *, axis: int) -> np.ndarray:
        """The outputs ``start:stop`` along ``axis`` of ``values`` (float32): tap 0's products, plus tap 1's ...,
        in place (the order of the sums is the taps' order, whatever computes them)."""
        index, weight = self.index[start:stop], self.weight[start:stop]
        w = weight if axis == 1 else weight[:, None, :]  # broadcast along the other axis
        out = np.take(values, index[:, 0], axis=axis)
        out *= w[..., 0]
        for k in range(1, index.shape[1]):
            term = np.take(values, index[:, k], axis=axis)
            term *= w[..., k]
            out += term
        return out


def select_candidates(
    logits: torch.Tensor,
    scores: np.ndarray,
    points: np.ndarray,
    *,
    upsampler,
    threshold: float,
    options: GeneratorOptions,
    crop: tuple[int, int, int, int],
    hw: tuple[int, int],
    bound: StabilityBound | None = None,
    resampler: Resampler | None = None,
    candidate: np.ndarray | None = None,
) -> Instances:
    """The candidates of one batch that pass the thresholds and the crop-edge test, as Instances of the image.

    Args:
        logits: float (K, L, L) low-res logits of K candidates, in the crop's SAM input frame.
        scores: float (K,) their predicted IoU.
        points: float (K, 2) the (x, y) point (crop pixels) each candidate answers.
        upsampler: the crop's :class:`pipeline.sam.upsample.Upsampler` (logits -> crop pixels).
        threshold: the model's mask logit threshold.
        options: the thresholds.
        crop: (x0, y0, x1, y1) of the crop in the image; masks are moved by (x0, y0).
        hw: the image's (H, W).
        bound: the crop's :class:`StabilityBound` (made here when None).
        resampler: the crop's :class:`Resampler` (made here when None).
        candidate: int (K,) which of its point's SAM candidates each is (0 when None).

    Returns:
        Instances: masks in image pixels, ``xyxy`` their tight boxes, ``mask_score``, and ``extras``
        ``stability_score``, ``point_xy`` (image pixels) and ``multimask_index`` (``candidate``).
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    idx = np.flatnonzero(scores > options.pred_iou_thresh)
    bound = bound or StabilityBound(upsampler)
    resampler = resampler or Resampler(upsampler)
    off = options.stability_offset
    ts = tuple(upsampler.profile.upsample_threshold(float(t)) for t in (threshold, threshold + off, threshold - off))
    masks, kept, stability = [], [], []
    for start in range(0, idx.size, 16):  # bounded temporaries: 3 x 16 x L^2 float32
        chunk = idx[start : start + 16]
        values = bound.values(logits[torch.as_tensor(chunk)])
        lo, hi = bound.pooled(values)
        for k in np.flatnonzero(bound.may_pass_pooled(lo, hi, threshold, off, options.stability_thresh)):
            bits, x0, y0, (area, hi_area, lo_area) = resampler.stable_mask(values[k], lo[k], hi[k], ts)
            s = hi_area / lo_area if lo_area else 0.0
            if lo_area == 0 or s < options.stability_thresh or not area:
                continue
            masks.append(_tight(bits, crop[0] + x0, crop[1] + y0))
            kept.append(int(chunk[k]))
            stability.append(s)
    candidate = np.zeros(len(scores), np.int64) if candidate is None else np.asarray(candidate, np.int64)
    points = np.asarray(points, np.float64)[kept] + crop[:2]
    out = _instances(masks, scores[kept], np.array(stability), points, candidate[kept])
    if len(out) and tuple(crop) != (0, 0, hw[1], hw[0]):
        out = out[~near_crop_edge(nms_boxes(out.masks), crop, hw)]
    return out


def _instances(masks: list, scores: np.ndarray, stability: np.ndarray, points: np.ndarray, candidate=None) -> Instances:
    n = len(masks)
    candidate = np.zeros(n, np.int64) if candidate is None else candidate
    return Instances(
        xyxy=np.array([m.xyxy for m in masks], dtype=np.float32).reshape(n, 4),
        class_id=np.zeros(n, dtype=np.int64),
        masks=tuple(masks),
        mask_score=np.asarray(scores, dtype=np.float32).reshape(n),
        extras={
            "stability_score": np.asarray(stability, dtype=np.float64).reshape(n),
            "point_xy": np.asarray(points, dtype=np.float64).reshape(n, 2),
            "multimask_index": np.asarray(candidate, dtype=np.int64).reshape(n),
        },
    )


class Survivors:
    """The candidates of one crop that passed, gathered batch by batch for the crop's box NMS, holding only the
    masks that NMS may keep.

    A candidate whose box overlaps a better one's above the NMS threshold (better: a higher predicted IoU, or the
    same and earlier) gives its mask up at once, keeping its box, score and point: NMS keeps it only in the rare
    chain where that better one is itself suppressed by a third that does not overlap it, and then its mask is
    decoded again from its point (``missing``). So the masks held follow the objects, not the grid.
    """

    def __init__(self, nms_thresh: float) -> None:
        self.nms_thresh = nms_thresh
        self.parts: list[Instances] = []
        self.masks: list[CropMask | None] = []
        self.boxes = np.zeros((0, 4))
        self.scores = np.zeros(0)

    def add(self, found: Instances) -> None:
        n_old = len(self.masks)
        self.parts.append(found.replace(masks=(None,) * len(found)))
        self.masks.extend(found.masks)
        self.boxes = np.concatenate([self.boxes, nms_boxes(found.masks)])
        self.scores = np.concatenate([self.scores, found.mask_score.astype(np.float64)])
        n = len(self.masks)
        new = np.arange(n_old, n)
        held = np.array([i for i in range(n_old) if self.masks[i] is not None], dtype=np.int64)
        for rows, cols in ((new, np.arange(n)), (held, new)):  # the new ones against all; the held against the new
            if rows.size and cols.size:
                beaten = self._beaten(rows, cols)
                for i in rows[beaten]:
                    self.masks[int(i)] = None

    def _beaten(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """bool per row: some col is better and overlaps it above the NMS threshold."""
        out = np.zeros(len(rows), dtype=bool)
        for start in range(0, len(rows), 256):  # bounded temporaries
            r = rows[start : start + 256]
            better = (self.scores[cols][None] > self.scores[r][:, None]) | (
                (self.scores[cols][None] == self.scores[r][:, None]) & (cols[None] < r[:, None])
            )
            out[start : start + 256] = (better & (_box_iou(self.boxes[r], self.boxes[cols]) > self.nms_thresh)).any(1)
        return out

    def kept(self) -> tuple[Instances, list[int]]:
        """The crop's box NMS over every survivor: (kept instances, best first; the positions among them whose
        mask was given up and must be decoded again)."""
        found = concat(self.parts).replace(masks=tuple(self.masks))
        keep = box_nms(self.boxes, self.scores, self.nms_thresh)
        out = found[keep]
        return out, [i for i, m in enumerate(out.masks) if m is None]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of boxes (areas as ``box_nms``)."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def concat(parts: list[Instances]) -> Instances:
    """The instances of ``parts``, one after the other (all parts have the same ``extras`` keys)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return _instances([], np.zeros(0), np.zeros(0), np.zeros((0, 2)), np.zeros(0, np.int64))
    return Instances(
        xyxy=np.concatenate([p.xyxy for p in parts]),
        class_id=np.concatenate([p.class_id for p in parts]),
        masks=tuple(m for p in parts for m in p.masks),
        mask_score=np.concatenate([p.mask_score for p in parts]),
        extras={k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras},
    )


def merge_crops(per_crop: list[tuple[Instances, tuple[int, int, int, int]]], options: GeneratorOptions) -> Instances:
    """Each crop's masks after its box NMS, then across crops the NMS that prefers the smaller crop."""
    kept, areas = [], []
    for found, (x0, y0, x1, y1) in per_crop:
        kept.append(found[box_nms(nms_boxes(found.masks), found.mask_score, options.box_nms_thresh)])
        areas.append(np.full(len(kept[-1]), (x1 - x0) * (y1 - y0), dtype=np.float64))
    out = concat(kept)
    if len(per_crop) > 1 and len(out):
        out = out[box_nms(nms_boxes(out.masks), 1.0 / np.concatenate(areas), options.crop_nms_thresh)]
    return out


def clean_regions(found: Instances, options: GeneratorOptions, hw: tuple[int, int]) -> Instances:
    """With ``min_region_area``: small holes and islands removed from each mask, then a box NMS that prefers the
    masks that did not change (segment-anything's ``postprocess_small_regions``)."""
    if options.min_region_area <= 0 or not len(found):
        return found
    if any(m is None for m in found.masks):
        raise ValueError("clean_regions needs a mask on every instance")
    cleaned = [remove_small_regions(m, options.min_region_area, hw) for m in found.masks if m is not None]
    masks = tuple(m for m, _ in cleaned)
    unchanged = np.array([not changed for _, changed in cleaned], dtype=np.float64)
    out = found.replace(masks=masks, xyxy=np.array([m.xyxy for m in masks], np.float32).reshape(-1, 4))
    return out[box_nms(nms_boxes(masks), unchanged, options.box_nms_thresh)]


# ------------------------------------------------------------------------------------------- the stage
class MaskGenerator:
    """The automatic mask generator (a ``GeneratorStage``) on a :class:`pipeline.sam.Segmenter`.

    Args:
        segmenter: the SAM stage (its model, runtime and embedding of the last image are shared).
        options: the generator's parameters.

    Attributes:
        stats: counters of the last call: ``prompts`` decoded, ``skipped`` (points inside ``covered``),
            ``candidates`` (3 per prompt), ``passed`` (thresholds and crop edges), ``redecoded`` (masks given up
            and decoded again, see :class:`Survivors`), ``kept``.
    """

    def __init__(self, segmenter, options: GeneratorOptions | None = None) -> None:
        self.segmenter = segmenter
        self.options = options or GeneratorOptions()
        self.stats: dict[str, int] = {}

    def __call__(self, rgb: np.ndarray, covered: Instances | None = None) -> Instances:
        """Every object SAM finds in ``rgb`` (uint8 (H, W, 3)); see ``pipeline.types.GeneratorStage``."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ValueError(f"rgb: expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        opts = self.options
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        skip = _covered_pixels(covered, hw) if opts.skip_covered and covered is not None and len(covered) else None
        self.stats = dict.fromkeys(("prompts", "skipped", "candidates", "passed", "redecoded", "kept"), 0)
        per_crop = []
        for crop, layer in crop_boxes(hw, opts.crop_layers, opts.crop_overlap_ratio):
            per_crop.append((self._crop(rgb, crop, layer, skip, hw), crop))
        out = clean_regions(merge_crops(per_crop, opts), opts, hw)
        self.stats["kept"] = len(out)
        LOGGER.debug("generator: %s", self.stats)
        return out.replace(source_id=np.arange(len(out)))

    def _crop(self, rgb: np.ndarray, crop, layer: int, skip: np.ndarray | None, hw) -> Instances:
        x0, y0, x1, y1 = crop
        image = rgb if (x0, y0, x1, y1) == (0, 0, hw[1], hw[0]) else np.ascontiguousarray(rgb[y0:y1, x0:x1])
        n = self.options.points_per_side // self.options.crop_points_downscale**layer
        points = point_grid(n) * [x1 - x0, y1 - y0]
        if skip is not None:
            cols = np.clip((points[:, 0] + x0).astype(np.int64), 0, hw[1] - 1)
            rows = np.clip((points[:, 1] + y0).astype(np.int64), 0, hw[0] - 1)
            inside = skip[rows, cols]
            self.stats["skipped"] += int(inside.sum())
            points = points[~inside]
        if not len(points):
            return concat([])
        seg = self.segmenter
        embedding = seg.set_image(image)
        bound, resampler = StabilityBound(embedding.upsampler), Resampler(embedding.upsampler)
        survivors = Survivors(self.options.box_nms_thresh)
        for start in range(0, len(points), self.options.points_per_batch):
            batch = points[start : start + self.options.points_per_batch]
            pred = seg.predict(
                embedding, points=batch[:, None, :], point_labels=np.ones((len(batch), 1)), multimask=True
            )
            k = pred.scores.shape[1]
            found = select_candidates(
                pred.logits.flatten(0, 1),
                pred.scores.reshape(-1),
                np.repeat(batch, k, axis=0),
                upsampler=pred.upsampler,
                threshold=pred.threshold,
                options=self.options,
                crop=crop,
                hw=hw,
                bound=bound,
                resampler=resampler,
                candidate=np.tile(np.arange(k), len(batch)),
            )
            self.stats["prompts"] += len(batch)
            self.stats["candidates"] += len(batch) * k
            self.stats["passed"] += len(found)
            survivors.add(found)
        found, missing = survivors.kept()
        return self._decode_again(found, missing, embedding, resampler, crop) if missing else found

    def _decode_again(self, found: Instances, missing: list[int], embedding, resampler, crop) -> Instances:
        """``found`` with the masks of ``missing`` decoded again from their points (see :class:`Survivors`)."""
        points = found.extras["point_xy"][missing] - crop[:2]
        pred = self.segmenter.predict(
            embedding, points=points[:, None, :], point_labels=np.ones((len(missing), 1)), multimask=True
        )
        self.stats["redecoded"] += len(missing)
        masks = list(found.masks)
        for row, i in enumerate(missing):
            ((bits, x0, y0),) = resampler.masks(
                pred.logits[row, int(found.extras["multimask_index"][i])], (pred.threshold,)
            )
            masks[i] = _shift(CropMask.from_full(bits), crop[0] + x0, crop[1] + y0)
        return found.replace(masks=tuple(masks))


def _covered_pixels(covered: Instances, hw: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the pixels inside any of ``covered``'s masks (an instance without a mask covers nothing)."""
    out = np.zeros(hw, dtype=bool)
    for m in covered.masks:
        if m is not None and m.area:  # painted on its box only
            y1, x1 = min(m.y0 + m.shape[0], hw[0]), min(m.x0 + m.shape[1], hw[1])
            if y1 > m.y0 and x1 > m.x0:
                out[m.y0 : y1, m.x0 : x1] |= m.bits[: y1 - m.y0, : x1 - m.x0]
    return out


class EverythingDetector:
    """The instance source of ``--mode everything``: every mask of the generator an instance of one class.

    Implements ``DetectorStage`` (its instances come with masks, so the SAM stage has nothing left to do).
    """

    def __init__(self, generator, name: str = "object") -> None:
        self.generator = generator
        self.names = (name,)

    def __call__(self, rgb: np.ndarray) -> Instances:
        return self.generator(rgb)


__all__ = [
    "EDGE_TOLERANCE",
    "EverythingDetector",
    "GeneratorOptions",
    "MaskGenerator",
    "StabilityBound",
    "Survivors",
    "box_nms",
    "clean_regions",
    "crop_boxes",
    "merge_crops",
    "near_crop_edge",
    "nms_boxes",
    "point_grid",
    "remove_small_regions",
    "select_candidates",
]
