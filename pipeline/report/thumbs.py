"""One gallery thumbnail: the crop around an instance, drawn with OpenCV at the thumbnail's resolution.

The crop is cut from the image, resized to the thumbnail, and the masks are rasterized straight at the
thumbnail's resolution (polygons by pycocotools in the crop's coordinates; RLE decoded, cropped and resized
nearest-neighbour), so outlines and boxes are drawn 1-2 px wide whatever the image size: drawing on a
4000 px crop and shrinking it would thin the lines away, and enlarging a 20 px crop would blur them.

The look is that of supervision's annotators (its default palette; ``MaskAnnotator`` fills, larger masks
under smaller ones; ``PolygonAnnotator`` outlines of every contour, holes too; ``BoxAnnotator`` boxes), drawn
here with a few OpenCV calls: importing supervision's annotators costs about 0.9 s (they pull in scipy), and
every run writes this report at its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

#: Context around an instance: this fraction of its larger side on each side of the crop.
CONTEXT = 0.25
#: Smallest crop side in image pixels (less where the image is smaller), so a tiny instance keeps its surroundings.
MIN_CROP = 48
#: Other instances drawn (lighter) in one thumbnail at most: those whose boxes overlap the crop most.
MAX_NEIGHBOURS = 40

#: Class colours (``#rrggbb``), class id modulo their number: supervision's default palette
#: (``sv.ColorPalette.DEFAULT``), so a dataset looks the same here, in review and in supervision's own tools.
PALETTE = (
    "#a351fb", "#ff4040", "#ffa1a0", "#ff7633", "#ffb633", "#d1d435", "#4cfb12", "#94cf1a", "#40de8a", "#1b9640",
    "#00d6c1", "#2e9caa", "#00c4ff", "#364797", "#6675ff", "#0019ef", "#863aff", "#530087", "#cd3aff", "#ff97ca",
    "#ff39c9",
)  # fmt: skip

#: Opacity of the focus instance's fill and of the other instances' fills.
FOCUS_OPACITY, OTHERS_OPACITY = 0.45, 0.25
#: Outline width of the focus instance, in thumbnail pixels.
OUTLINE_PX = 2
BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def class_color(class_id: int) -> str:
    """The colour of a class as ``#rrggbb``: the same in the thumbnails, the class table and the review page."""
    return PALETTE[int(class_id) % len(PALETTE)]


def bgr(hex_colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> (b, g, r), as OpenCV draws on a BGR image."""
    v = int(hex_colour.lstrip("#")[:6], 16)
    return v & 255, (v >> 8) & 255, (v >> 16) & 255


@dataclass(frozen=True)
class Shape:
    """An instance to draw.

    Attributes:
        class_id: index into data.yaml's names.
        segmentation: COCO polygons (``[[x1, y1, x2, y2, ...], ...]``, absolute pixels) or COCO RLE
            (``{"size": [H, W], "counts": str | list}``).
        extent_xyxy: the mask's tight box (x_min, y_min, x_max, y_max), absolute pixels.
        prompt_xyxy: the detector's prompt box, same format, or None when unknown.
    """

    class_id: int
    segmentation: list | dict
    extent_xyxy: tuple[float, float, float, float]
    prompt_xyxy: tuple[float, float, float, float] | None = None


def shape_from_coco(ann: dict) -> Shape:
    """A ``Shape`` from a COCO annotation (``segmentation``, ``bbox``, optional ``det_bbox``, all xywh).

    Raises:
        ValueError: the annotation lacks a usable segmentation or bbox.
    """
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        seg = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not seg:
            raise ValueError("the annotation has no polygon with 3 or more points")
    elif not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
        raise ValueError("the annotation's segmentation is neither polygons nor RLE")
    extent = _xywh_to_xyxy(ann.get("bbox"))
    if extent is None:
        raise ValueError("the annotation has no valid bbox")
    return Shape(
        class_id=int(ann.get("category_id", 1)) - 1,
        segmentation=seg,
        extent_xyxy=extent,
        prompt_xyxy=_xywh_to_xyxy(ann.get("det_bbox")),
    )


def shapes_from_yolo(rows: Sequence[tuple[int, np.ndarray]], hw: tuple[int, int]) -> list[Shape]:
    """``Shape``s from YOLO-seg rows (class, polygon float (K, 2) normalised to [0, 1]) of an image of size ``hw``."""
    shapes = []
    for class_id, polygon in rows:
        xy = np.asarray(polygon, dtype=np.float64) * [hw[1], hw[0]]
        if len(xy) < 3:
            xy = np.zeros((3, 2))  # keeps the line numbers aligned; draws nothing
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        shapes.append(Shape(int(class_id), [xy.reshape(-1).tolist()], (x0, y0, x1, y1)))
    return shapes


def _xywh_to_xyxy(box) -> tuple[float, float, float, float] | None:
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        return None
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        return None
    return (x, y, x + w, y + h)


def crop_window(shape: Shape, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) of the crop around ``shape`` (mask box and prompt box), inside an image ``hw``."""
    boxes = [shape.extent_xyxy] + ([shape.prompt_xyxy] if shape.prompt_xyxy else [])
    ax0, ay0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    ax1, ay1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad = CONTEXT * max(ax1 - ax0, ay1 - ay0)
    x0, x1 = _span(ax0 - pad, ax1 + pad, hw[1])
    y0, y1 = _span(ay0 - pad, ay1 + pad, hw[0])
    return x0, y0, x1, y1


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """[lo, hi) widened to ``MIN_CROP`` around its centre, shifted and clipped into [0, size), at least 1 px."""
    want = min(size, max(MIN_CROP, math.ceil(hi - lo)))
    centre = (lo + hi) / 2
    a = int(math.floor(centre - want / 2))
    a = min(max(a, 0), size - want)
    return a, a + want


def render(rgb: np.ndarray, focus: Shape, others: Neighbours, *, thumb_size: int) -> np.ndarray:
    """The thumbnail of ``focus``: BGR uint8 (h, w, 3) whose longer side is ``thumb_size``.

    The focus mask is filled in its class colour (opacity 0.45) and outlined; its prompt box is drawn as a
    white line on a black halo (visible on any background); the other instances in the crop are filled lighter.

    Args:
        rgb: the image, uint8 (H, W, 3).
        focus: the instance the thumbnail is about.
        others: the image's instances (the focus among them is skipped, and those outside the crop).
        thumb_size: longer side of the result, in pixels.

    Raises:
        ValueError: a segmentation cannot be decoded (e.g. an RLE for another image size).
    """
    hw = (rgb.shape[0], rgb.shape[1])
    window = crop_window(focus, hw)
    x0, y0, x1, y1 = window
    scale = thumb_size / max(x1 - x0, y1 - y0)
    out_wh = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    memo = others.memo((id(rgb), rgb.shape, window, out_wh), keep=rgb)
    if "scene" not in memo:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(rgb[y0:y1, x0:x1], out_wh, interpolation=interpolation)
        memo["scene"] = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    scene: np.ndarray = memo["scene"].copy()

    def mask_of(shape: Shape) -> np.ndarray:
        hit = memo.get(id(shape))
        if hit is None or hit[0] is not shape:
            hit = memo[id(shape)] = (shape, _window_mask(shape.segmentation, hw, window, out_wh))
        return hit[1]

    solids = memo.setdefault("solids", {})
    near = others.near(window, exclude=focus)
    if near:
        masks = [mask_of(s) for s in near]
        _fill(scene, masks, [class_color(s.class_id) for s in near], opacity=OTHERS_OPACITY, solids=solids)
    mask = mask_of(focus)
    color = class_color(focus.class_id)
    _fill(scene, [mask], [color], opacity=FOCUS_OPACITY, solids=solids)
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    cv2.polylines(scene, [c for c in contours if len(c) >= 3], True, bgr(color), OUTLINE_PX)
    if focus.prompt_xyxy is not None:
        bx0, by0, bx1, by1 = (int(v) for v in _to_window([focus.prompt_xyxy], window, out_wh)[0])
        cv2.rectangle(scene, (bx0, by0), (bx1, by1), BLACK, 3)
        cv2.rectangle(scene, (bx0, by0), (bx1, by1), WHITE, 1)
    return scene


def _fill(
    scene: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[str], *, opacity: float, solids: dict
) -> None:
    """Blend ``masks`` (bool (h, w) each) into ``scene`` (BGR, in place) in their colours at ``opacity``;
    larger masks are painted first, so a smaller one on top of a larger one stays visible.

    ``solids``: colour -> an image of that colour the size of ``scene`` (made here when missing, kept for reuse).
    """
    painted = scene.copy()
    union = np.zeros(scene.shape[:2], dtype=np.uint8)
    for i in sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i]))):
        mask = masks[i].view(np.uint8)
        if colors[i] not in solids:
            solids[colors[i]] = np.tile(np.array(bgr(colors[i]), dtype=np.uint8), (*scene.shape[:2], 1))
        cv2.copyTo(solids[colors[i]], mask, painted)  # OpenCV's masked copy: ~40x numpy's boolean indexing here
        cv2.bitwise_or(union, mask, dst=union)
    cv2.copyTo(cv2.addWeighted(painted, opacity, scene, 1 - opacity, 0), union, scene)


class Neighbours:
    """An image's shapes with their mask boxes in one array, to find those in a crop quickly.

    Args:
        shapes: every drawable instance of the image (the focus may be among them: it is skipped).
    """

    def __init__(self, shapes: Sequence[Shape]) -> None:
        self.shapes = list(shapes)
        self.xyxy = np.array([s.extent_xyxy for s in self.shapes], dtype=np.float64).reshape(-1, 4)
        self._memo_key: tuple | None = None
        self._memo: dict = {}

    def memo(self, key: tuple, *, keep: object) -> dict:
        """Scratch space of the crop ``key`` (the last one drawn: cards of one image in the same crop share its
        resized image and masks; memory: one crop's). ``keep`` is held with it (the image whose id is in the key)."""
        if key != self._memo_key:
            self._memo_key, self._memo = key, {"keep": keep}
        return self._memo

    def near(self, window: tuple[int, int, int, int], *, exclude: Shape) -> list[Shape]:
        """The ``MAX_NEIGHBOURS`` shapes whose mask box overlaps ``window`` most (ties: in the given order)."""
        x0, y0, x1, y1 = window
        b = self.xyxy
        w = np.clip(np.minimum(b[:, 2], x1) - np.maximum(b[:, 0], x0), 0, None)
        h = np.clip(np.minimum(b[:, 3], y1) - np.maximum(b[:, 1], y0), 0, None)
        overlap = w * h
        order = np.argsort(-overlap, kind="stable")
        out: list[Shape] = []
        for i in order:
            if overlap[i] <= 0 or len(out) == MAX_NEIGHBOURS:
                break
            if self.shapes[i] is not exclude:
                out.append(self.shapes[i])
        return out


def _to_window(boxes_xyxy, window, out_wh) -> np.ndarray:
    """Boxes (N, 4) xyxy in image pixels -> float32 (N, 4) xyxy in thumbnail pixels."""
    x0, y0, x1, y1 = window
    sx, sy = out_wh[0] / (x1 - x0), out_wh[1] / (y1 - y0)
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) - [x0, y0, x0, y0]
    return (b * [sx, sy, sx, sy]).astype(np.float32)


def _window_mask(segmentation, hw, window, out_wh) -> np.ndarray:
    """bool (h, w), C-contiguous, of the thumbnail: the mask inside ``window`` (x0, y0, x1, y1) resized to
    ``out_wh`` (w, h)."""
    x0, y0, x1, y1 = window
    w, h = out_wh
    if isinstance(segmentation, list):  # polygons: rasterized directly in thumbnail coordinates (pycocotools clips)
        sx, sy = w / (x1 - x0), h / (y1 - y0)
        flat = []
        for p in segmentation:
            xy = np.asarray(p, dtype=np.float64).reshape(-1, 2)
            flat.append((((xy - [x0, y0]) * [sx, sy]).reshape(-1)).tolist())
        return np.ascontiguousarray(mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, h, w))), dtype=bool)
    size = [int(v) for v in segmentation["size"]]
    if size != list(hw):
        raise ValueError(f"an RLE of size {size[1]}x{size[0]} on an image of {hw[1]}x{hw[0]}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, *size)
    else:
        rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    full = mask_utils.decode(rle)
    return np.ascontiguousarray(cv2.resize(full[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_NEAREST), dtype=bool)


def encode_jpeg(bgr: np.ndarray, *, max_bytes: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of ``bgr`` no larger than ``max_bytes``, and their (w, h): quality lowered, then the image
    halved, until it fits."""
    while True:
        for quality in (85, 70, 55, 40, 25):
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(buf) <= max_bytes:
                return buf.tobytes(), (bgr.shape[1], bgr.shape[0])
        if min(bgr.shape[:2]) <= 8:
            raise ValueError(f"cannot encode a thumbnail in {max_bytes} bytes")
        bgr = cv2.resize(bgr, (max(1, bgr.shape[1] // 2), max(1, bgr.shape[0] // 2)), interpolation=cv2.INTER_AREA)
