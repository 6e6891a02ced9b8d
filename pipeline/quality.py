"""Per-instance quality signals of SAM masks, and the flags that mark instances for review.

Everything here is pure numpy on one image's instances: no model, no file. Coordinates are pixel-edge
image coordinates as in ``pipeline.masks``: pixel ``(row r, col c)`` covers ``[c, c + 1) x [r, r + 1)``,
so a box ``(x_min, y_min, x_max, y_max)`` has exclusive maxima and its centre rule is stated where used.

Signals (each an array with one value per instance, see :func:`compute_signals`):

- ``mask_score``: SAM's predicted IoU, passed through (NaN where no model scored the mask).
- ``stability_score``: IoU of the mask thresholded at logit +1 and at logit -1 (:func:`stability_score`).
- ``box_fit``: IoU of the mask's tight box with its prompt box.
- ``outside_box``: fraction of the mask's pixels whose centre lies outside the prompt box.
- ``parts``: connected parts of the mask (8-connectivity), ``largest_part``: the largest one's share.
- ``overlap``: the largest mask IoU with another instance of the image, whatever its class.
- ``area``: mask pixels.
- ``overlap_with``: the index of the instance ``overlap`` was measured with (-1 when it overlaps none).

A signal that cannot be defined is NaN (no SAM score, no stability given, the share of pixels of an
empty mask), and a NaN never raises a flag.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline import options
from pipeline.masks import CropMask

# ------------------------------------------------------------------------------------------ registry
# The one list of signals and flags: the writers (``pipeline.run.outputs``), report.json (``pipeline.run.report``),
# report.html (``pipeline.report``) and the review app read names, order and meanings from here.


@dataclass(frozen=True)
class Signal:
    """One per-instance quality signal.

    Attributes:
        name: its key in :func:`compute_signals`' result, ``Instances.extras`` and the COCO annotation.
        meaning: what it measures, in a few words (tooltips, the report's tables).
        written: kept in ``Instances.extras`` and written on each COCO annotation (``mask_score`` and ``area``
            are fields of their own there; ``overlap_with`` is written as ``overlap_source_id``).
    """

    name: str
    meaning: str
    written: bool


#: The signals, in the order :func:`compute_signals` returns them.
SIGNAL_INFO: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("mask_score", "SAM's predicted IoU", written=False),
        Signal("stability_score", "IoU of the mask thresholded at logit +1 and at -1", written=True),
        Signal("box_fit", "IoU of the mask's tight box with its prompt box", written=True),
        Signal("outside_box", "share of the mask's pixels outside its prompt box", written=True),
        Signal("parts", "connected parts of the mask (8-connectivity)", written=True),
        Signal("largest_part", "the largest part's share of the mask's pixels", written=True),
        Signal("overlap", "the largest mask IoU with another instance of the image", written=True),
        Signal("area", "mask pixels", written=False),
        Signal("overlap_with", "the instance ``overlap`` was measured with (-1: none)", written=False),
    )
}

#: Signal names, in the order :func:`compute_signals` returns them.
SIGNALS = tuple(SIGNAL_INFO)

#: The signals kept on each instance (``Instances.extras``) and written on its COCO annotation, in this order.
WRITTEN_SIGNALS = tuple(name for name, s in SIGNAL_INFO.items() if s.written)

#: What each flag means, in the order :func:`flag` lists them (tooltips, the report's flag table, the review app).
FLAG_MEANINGS: dict[str, str] = {
    "empty": "the mask has no pixels (never in the label files)",
    "low_score": "SAM's predicted IoU is low",
    "unstable": "the mask changes a lot when its threshold moves (low stability score)",
    "leaks_box": "much of the mask lies outside its prompt box",
    "underfills_box": "the mask covers little of its prompt box",
    "fragmented": "the mask falls apart into several pieces",
    "duplicate": "the mask overlaps another instance heavily",
    "tiny": "the mask has very few pixels",
}

#: Flag names, in the order :func:`flag` lists them.
FLAGS = tuple(FLAG_MEANINGS)

#: What the writers put in ``Instances.extras`` and on each COCO annotation: the written signals, then ``flags``.
QUALITY_FIELDS = (*WRITTEN_SIGNALS, "flags")

#: ``--multimask`` strategies: one SAM mask per box (``off``), or the best of SAM's 3 by ``choose_candidate``.
MULTIMASK = options.MULTIMASK


@dataclass(frozen=True)
class QualityThresholds:
    """Where each flag starts; a value exactly at a threshold raises no flag.

    Attributes:
        min_mask_score: ``low_score`` when ``mask_score < 0.5``: the review threshold of today's
            report.json (instances "with SAM score < 0.5, to review"), kept so both agree.
        min_stability: ``unstable`` when ``stability_score < 0.85``. segment-anything's automatic mask
            generator keeps masks at >= 0.95, but it filters thousands of unprompted candidates and
            wants precision; a box prompt already fixes which object is meant, so what stays uncertain
            is the outline. 0.85 means 15 % of the loose mask's pixels flip between logit -1 and +1:
            on a 64 x 64 object (4096 px, outline ~256 px) a band of ~2.4 px all around, more than SAM's
            upsampled 256 x 256 logits blur a real edge. The same band costs a small object more, so
            small objects are flagged more readily (which is where SAM is weakest too).
        max_outside_box: ``leaks_box`` when ``outside_box > 0.1``: the box prompted the mask, so pixels
            beyond it are another object or background. 10 % allows the few pixels a slightly tight
            detector box cuts off (a 2.5 px rim around a 100 x 100 object is 10 % of it).
        min_box_fit: ``underfills_box`` when ``box_fit < 0.5``: the line at which detection (PASCAL VOC,
            COCO AP50) stops calling two boxes the same object; a mask whose tight box would not even
            count as a detection of its prompt box is not the object the detector saw (often a part of it).
        min_largest_part: ``fragmented`` when ``largest_part < 0.8``: one object seen through an occluder
            splits into a few pieces but one usually dominates; below 80 % the mask is several things.
        max_parts: ``fragmented`` also when ``parts > 5``: more pieces than an occluded object plausibly
            shows; SAM's speckle (the small islands its automatic generator removes with
            ``min_mask_region_area``) would otherwise pass the share test.
        max_overlap: ``duplicate`` when ``overlap > 0.8``: two instances whose masks are 80 % the same
            pixels label one object twice (box NMS, per class in Ultralytics and at IoU 0.7 by default,
            keeps two boxes of different classes, or two boxes whose masks converged on one object).
        min_area: ``tiny`` when ``0 < area < 16`` px (4 x 4): a quarter of the finest detection cell of
            YOLOv8 (stride 8), too small to be an object the detector resolved; usually a speck.
    """

    min_mask_score: float = 0.5
    min_stability: float = 0.85
    max_outside_box: float = 0.1
    min_box_fit: float = 0.5
    min_largest_part: float = 0.8
    max_parts: int = 5
    max_overlap: float = 0.8
    min_area: int = 16

    @classmethod
    def parse(cls, value: str | Mapping[str, object] | QualityThresholds | None) -> QualityThresholds:
        """Thresholds from ``"name=number,..."`` (the CLI's ``--thresholds``) or a mapping (a YAML config);
        names may use ``-`` for ``_``; the rest keep their defaults.

        Raises:
            ValueError: an entry that is not ``name=number`` with a name of this class.
        """
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        entries: list[tuple[str, object, str]]  # (name, number as given, the entry as given)
        if isinstance(value, Mapping):
            entries = [(str(k), v, f"{k}={v}") for k, v in value.items()]
        else:
            parts = filter(None, (p.strip() for p in str(value).split(",")))
            entries = [(p.partition("=")[0], p.partition("=")[2], p) for p in parts]
        ints = {f.name for f in dataclasses.fields(cls) if f.type == "int"}
        known = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}  # int for the int fields, float for the rest
        for name, given, part in entries:
            name = name.strip().replace("-", "_")
            number: float | None
            try:
                number = float(given) if isinstance(given, (str, int, float)) and not isinstance(given, bool) else None
            except ValueError:
                number = None
            if name not in known or number is None:
                raise ValueError(f"thresholds: bad entry {part!r}; expected name=number with names from {known}")
            values[name] = int(number) if name in ints else number
        return cls(**values)

    def __str__(self) -> str:
        """The thresholds that differ from the defaults, as ``parse`` reads them (``""`` for the defaults)."""
        default = QualityThresholds()
        changed = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        return ",".join(f"{name}={getattr(self, name)}" for name in changed)


# ------------------------------------------------------------------------------------------- signals


def stability_score(mask_hi: CropMask, mask_lo: CropMask) -> float:
    """IoU of a mask thresholded at logit ``+offset`` (``mask_hi``) and at ``-offset`` (``mask_lo``).

    As segment-anything's ``calculate_stability_score`` (offset 1): since ``mask_hi`` lies inside
    ``mask_lo`` this is ``area(mask_hi) / area(mask_lo)``; the IoU is computed, so masks that are not
    nested (e.g. cropped differently) still give a value in [0, 1].

    Both empty gives 1.0: nothing changes when the threshold moves, which is what the score measures
    (and ``pipeline.masks.mask_iou`` gives two empty masks 1.0 too). An empty mask is already flagged
    ``empty``; a NaN here would read as "not computed".
    """
    inter = _intersection(_Geom.of(mask_hi, None), _Geom.of(mask_lo, None))
    union = mask_hi.area + mask_lo.area - inter
    return 1.0 if union == 0 else inter / union


def stability_from_logits(logits: np.ndarray, *, threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """:func:`stability_score` straight from mask logits, for the SAM stage.

    Args:
        logits: float array (..., H, W), e.g. SAM's low-resolution (B, 256, 256) mask logits.
        threshold: the mask threshold (SAM's is 0).
        offset: how far the threshold moves either way.

    Returns:
        float64 array (...): ``count(logits > threshold + offset) / count(logits > threshold - offset)``,
        1.0 where both counts are 0.
    """
    logits = np.asarray(logits)
    hi = (logits > threshold + offset).sum(axis=(-2, -1))
    lo = (logits > threshold - offset).sum(axis=(-2, -1))
    return np.where(lo == 0, 1.0, hi / np.maximum(lo, 1))


def compute_signals(
    masks: Sequence[CropMask | None],
    xyxy: np.ndarray,
    hw: tuple[int, int],
    *,
    mask_score: np.ndarray | None = None,
    stability: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Quality signals of one image's instances.

    Masks are clipped to the image and prompt boxes to ``[0, W] x [0, H]`` first (a detector box may
    reach past the border, its mask cannot). An empty mask (or ``None``) has ``area`` 0, ``parts`` 0,
    ``box_fit`` 0 and ``overlap`` 0; ``outside_box`` and ``largest_part`` (shares of no pixels) are NaN.
    Empty masks never reach the dataset (the writer drops them), so these values only feed the
    ``empty`` flag.

    Args:
        masks: N masks (``CropMask``; ``None`` counts as empty).
        xyxy: float (N, 4) prompt boxes (x_min, y_min, x_max, y_max) in pixel-edge coordinates.
        hw: (H, W) of the image.
        mask_score: float (N,) SAM's predicted IoU, NaN where none; all NaN when omitted.
        stability: float (N,) stability scores (:func:`stability_score`); all NaN when omitted.

    Returns:
        ``{name: array (N,)}`` for each name in ``SIGNALS``: ``parts``, ``area`` and ``overlap_with`` int64,
        the rest float64.
        ``outside_box`` counts pixel ``(r, c)`` inside the box when its centre ``(c + 0.5, r + 0.5)``
        lies in the closed box ``[x_min, x_max] x [y_min, y_max]``. ``parts`` uses 8-connectivity, so
        it equals the number of polygons the COCO writer emits (``mask_to_polygons`` traces
        diagonal neighbours as one outline).

    Raises:
        ValueError: arrays whose lengths differ from ``len(masks)``.
    """
    n = len(masks)
    xyxy = _checked("xyxy", xyxy, (n, 4))
    mask_score = np.full(n, np.nan) if mask_score is None else _checked("mask_score", mask_score, (n,))
    stability = np.full(n, np.nan) if stability is None else _checked("stability", stability, (n,))
    h, w = int(hw[0]), int(hw[1])
    boxes = np.clip(xyxy, 0, [w, h, w, h])
    geoms = [_Geom.of(m, (h, w)) for m in masks]
    overlap, partner = _overlaps(geoms)
    out = {
        "mask_score": mask_score,
        "stability_score": stability,
        "box_fit": np.zeros(n),
        "outside_box": np.full(n, np.nan),
        "parts": np.zeros(n, dtype=np.int64),
        "largest_part": np.full(n, np.nan),
        "overlap": overlap,
        "area": np.array([g.area for g in geoms], dtype=np.int64),
        "overlap_with": partner,
    }
    for i, g in enumerate(geoms):
        if g.area == 0:
            continue
        out["box_fit"][i] = box_iou(g.xyxy, boxes[i])
        out["outside_box"][i] = 1.0 - _pixels_inside(g, boxes[i]) / g.area
        out["parts"][i], out["largest_part"][i] = _parts(g.bits)
    return out


def flag(
    signals: dict[str, np.ndarray], thresholds: QualityThresholds | None = None, *, rank: np.ndarray | None = None
) -> list[list[str]]:
    """The flags of each instance, in ``FLAGS`` order; a NaN signal raises none.

    An empty mask gets exactly ``["empty"]``: every other flag describes a mask that exists.

    Args:
        signals: as :func:`compute_signals` returns.
        thresholds: where each flag starts (``QualityThresholds()`` when omitted).
        rank: float (N,), higher is better (e.g. confidence x mask_score). Given, ``duplicate`` marks only
            the worse of two overlapping instances (ties: the later one), so leaving duplicates out keeps
            one of each pair; omitted, both are marked.

    Returns:
        One list of flag names per instance (empty when nothing is wrong).
    """
    t = QualityThresholds() if thresholds is None else thresholds
    s = {k: np.asarray(v, dtype=np.float64) for k, v in signals.items()}
    empty = s["area"] == 0
    duplicate = s["overlap"] > t.max_overlap
    if rank is not None and "overlap_with" in signals:
        rank = np.nan_to_num(np.asarray(rank, dtype=np.float64), nan=-np.inf)
        other = np.asarray(signals["overlap_with"], dtype=np.int64)
        idx = np.arange(len(other))
        better = np.where(other >= 0, (rank[other] > rank) | ((rank[other] == rank) & (other < idx)), False)
        duplicate &= better
    raised = {
        "empty": empty,
        "low_score": s["mask_score"] < t.min_mask_score,
        "unstable": s["stability_score"] < t.min_stability,
        "leaks_box": s["outside_box"] > t.max_outside_box,
        "underfills_box": s["box_fit"] < t.min_box_fit,
        "fragmented": (s["largest_part"] < t.min_largest_part) | (s["parts"] > t.max_parts),
        "duplicate": duplicate,
        "tiny": s["area"] < t.min_area,
    }
    return [["empty"] if empty[i] else [name for name in FLAGS if raised[name][i]] for i in range(len(s["area"]))]


def choose_candidate(
    candidate_masks: Sequence[CropMask],
    scores: np.ndarray,
    prompt_xyxy: Sequence[float],
    strategy: str = "score",
) -> int:
    """Which of SAM's multimask candidates to keep for one box prompt.

    Args:
        candidate_masks: the candidates (SAM gives 3).
        scores: float (len(candidate_masks),) their predicted IoUs; NaN ranks last.
        prompt_xyxy: the prompt box (x_min, y_min, x_max, y_max), pixel-edge coordinates.
        strategy: ``"score"``: the best predicted IoU; ``"box-fit"``: the best IoU of the candidate's
            tight box with the prompt box (an empty candidate fits 0), ties broken by score.
            Remaining ties go to the lowest index.

    Returns:
        The chosen index.

    Raises:
        ValueError: an unknown strategy, no candidates, or a score per candidate missing.
    """
    if strategy not in ("score", "box-fit"):
        raise ValueError(f"choose_candidate: strategy must be 'score' or 'box-fit', got {strategy!r}")
    n = len(candidate_masks)
    if n == 0:
        raise ValueError("choose_candidate: no candidate masks")
    ranked = np.nan_to_num(_checked("scores", scores, (n,)), nan=-np.inf)
    if strategy == "score":
        fits = [0.0] * n  # every candidate fits alike: the score decides
    else:
        box = [float(v) for v in prompt_xyxy]
        fits = [box_iou(g.xyxy, box) if g.area else 0.0 for g in (_Geom.of(m, None) for m in candidate_masks)]
    return min((-fits[i], -ranked[i], i) for i in range(n))[-1]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes (x_min, y_min, x_max, y_max) in pixel-edge coordinates; 0.0 when both are degenerate."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Geom:
    """A mask decoded once and cropped to its tight box: bits (h, w) at (x0, y0) in the image."""

    bits: np.ndarray
    x0: int
    y0: int
    area: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        h, w = self.bits.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @classmethod
    def of(cls, mask: CropMask | None, hw: tuple[int, int] | None) -> _Geom:
        """Decode ``mask``, clip it to an image of size ``hw`` (unless None) and crop it to its tight box."""
        if mask is None or mask.area == 0:
            return cls(np.zeros((0, 0), dtype=bool), 0, 0, 0)
        bits, x0, y0 = mask.bits, mask.x0, mask.y0
        if hw is not None:
            top, left = max(0, -y0), max(0, -x0)
            bits = bits[top : max(top, hw[0] - y0), left : max(left, hw[1] - x0)]
            x0, y0 = x0 + left, y0 + top
        rows, cols = np.flatnonzero(bits.any(axis=1)), np.flatnonzero(bits.any(axis=0))
        if rows.size == 0:
            return cls(np.zeros((0, 0), dtype=bool), 0, 0, 0)
        bits = bits[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return cls(bits, x0 + int(cols[0]), y0 + int(rows[0]), int(np.count_nonzero(bits)))


def _checked(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape and not (arr.size == 0 and shape[0] == 0):
        raise ValueError(f"{name}: expected shape {shape} (one entry per mask), got {arr.shape}")
    return arr.reshape(shape)


def _pixels_inside(g: _Geom, box: np.ndarray) -> int:
    """Mask pixels whose centre lies in the closed box: columns ceil(x_min - 0.5) .. floor(x_max - 0.5)."""
    c0, r0 = math.ceil(box[0] - 0.5) - g.x0, math.ceil(box[1] - 0.5) - g.y0
    c1, r1 = math.floor(box[2] - 0.5) - g.x0 + 1, math.floor(box[3] - 0.5) - g.y0 + 1
    if c1 <= max(c0, 0) or r1 <= max(r0, 0):
        return 0
    return int(np.count_nonzero(g.bits[max(r0, 0) : r1, max(c0, 0) : c1]))


def _parts(bits: np.ndarray) -> tuple[int, float]:
    """(number of 8-connected parts, largest part's share of the pixels) of a non-empty mask."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(bits.view(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    return int(n - 1), float(sizes.max() / sizes.sum())


def _intersection(a: _Geom, b: _Geom) -> int:
    """Pixels in both masks, counted on the window where their crops overlap."""
    ax0, ay0, ax1, ay1 = a.xyxy
    bx0, by0, bx1, by1 = b.xyxy
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if a.area == 0 or b.area == 0 or x1 <= x0 or y1 <= y0:
        return 0
    wa = a.bits[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    wb = b.bits[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return int(np.count_nonzero(wa & wb))


def _overlaps(geoms: list[_Geom]) -> tuple[np.ndarray, np.ndarray]:
    """Each mask's largest IoU with another and that other's index (-1: none); only pairs whose tight boxes
    intersect are compared."""
    n = len(geoms)
    out = np.zeros(n)
    partner = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return out, partner
    boxes = np.array([g.xyxy for g in geoms])
    nonempty = np.array([g.area > 0 for g in geoms])
    meets = (
        (boxes[:, None, 0] < boxes[None, :, 2])
        & (boxes[None, :, 0] < boxes[:, None, 2])
        & (boxes[:, None, 1] < boxes[None, :, 3])
        & (boxes[None, :, 1] < boxes[:, None, 3])
        & nonempty[:, None]
        & nonempty[None, :]
    )
    for i, j in zip(*np.nonzero(np.triu(meets, k=1)), strict=True):
        inter = _intersection(geoms[i], geoms[j])
        if inter:
            iou = inter / (geoms[i].area + geoms[j].area - inter)
            if iou > out[i]:
                out[i], partner[i] = iou, j
            if iou > out[j]:
                out[j], partner[j] = iou, i
    return out, partner
