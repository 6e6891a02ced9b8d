"""Scenes of known objects on the bench's photos, and an oracle SAM that answers a point with the object under it.

Random-weight MobileSAM answers every prompt with a near-whole-image mask, so it cannot tell how many grid points
covered-point skipping saves on a real image, nor whether it loses a missed object. For that measurement the
decoder is replaced by an oracle whose answers are known and depend on the image:

- the *background* of each photo is cut into regions by Felzenszwalb's graph segmentation (the "stuff" a trained
  SAM's grid finds in the background: road, wall, sky);
- ``objects`` ellipses (each with a 50% chance of a smaller *part* inside, as a window of a bus or a face of a
  person), seeded by the image's name, of radii from 3% to 20% of the image's short side (``radius``), are drawn
  over it (later ones occlude earlier ones); these are the objects a detector finds;
- the oracle answers a point prompt with SAM's three candidates: the part under the point, else the object or
  background region under it (predicted IoU 0.95; 0.9 for a background region), the whole object (0.94; the
  region again at 0.89 for background) and the whole image (0.3: below segment-anything's 0.88). Logits are
  sharp (+-100) on SAM's 256 x 256 low-resolution frame, laid out by the image's real upsampler, so the
  generator's own thresholds, stability, NMS and upsampling run unchanged.

Nothing here imports the tests (their ``PointSam`` is the same idea on a 64 x 64 image).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from pipeline.masks import CropMask
from pipeline.types import Instances

#: Logit of a region's inside and outside: no image pixel mixes to within the stability offset (1) of 0, except
#: on the one-pixel band of a boundary.
SHARP = 100.0


@dataclass(frozen=True)
class Scene:
    """A photo with known objects drawn on it.

    Attributes:
        rgb: uint8 (H, W, 3) the photo with the objects drawn.
        labels: int32 (H, W) region of each pixel: background regions first, then objects and parts as drawn.
        parent: int64 (R,) for each region, the object it belongs to (itself for objects and background).
        objects: the object labels, in drawing order, visible ones only.
        background: how many labels (from 0) are background regions.
    """

    rgb: np.ndarray
    labels: np.ndarray
    parent: np.ndarray
    objects: tuple[int, ...]
    background: int

    def whole(self, label: int) -> np.ndarray:
        """bool (H, W): the pixels of object ``label`` with its part."""
        return self.parent[self.labels] == label

    def detections(self, *, leave_out: int | None = None, bleed: int = 0) -> Instances:
        """The objects as a detector + SAM would give them (class 0), but ``leave_out`` (an object label), each
        mask dilated by ``bleed`` pixels (a box-prompted SAM mask is seldom exact)."""
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bleed + 1, 2 * bleed + 1)) if bleed else None
        masks = []
        for label in self.objects:
            if label == leave_out:
                continue
            bits = self.whole(label)
            if kernel is not None:
                bits = cv2.dilate(bits.view(np.uint8), kernel).astype(bool)
            masks.append(CropMask.from_full(bits))
        n = len(masks)
        return Instances(
            xyxy=np.array([m.xyxy for m in masks], dtype=np.float32).reshape(n, 4),
            class_id=np.zeros(n, dtype=np.int64),
            masks=tuple(masks),
        )


def make_scene(rgb: np.ndarray, name: str, *, objects: int = 6, radius: tuple[float, float] = (0.03, 0.2)) -> Scene:
    """``objects`` ellipses (some with a part inside) drawn over ``rgb``, whose background is cut into regions by
    Felzenszwalb's segmentation; placement and colours are seeded by ``name`` (the same scene every run).

    ``radius``: the range of the ellipses' long semi-axes, as shares of the short side (drawn log-uniformly)."""
    from skimage.segmentation import felzenszwalb

    h, w = rgb.shape[:2]
    labels = felzenszwalb(rgb, scale=400, sigma=0.8, min_size=max(h * w // 400, 16)).astype(np.int32)
    background = int(labels.max()) + 1
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = rgb.copy()
    short = min(h, w)
    parent = list(range(background))
    drawn = []
    for _ in range(objects):
        r = short * float(np.exp(rng.uniform(np.log(radius[0]), np.log(radius[1]))))
        axes = (max(int(r), 3), max(int(r * rng.uniform(0.5, 1.0)), 3))
        centre = (int(rng.uniform(axes[0], w - axes[0])), int(rng.uniform(axes[0], h - axes[0])))
        angle = float(rng.uniform(0, 180))
        label = len(parent)
        parent.append(label)
        _ellipse(labels, out, centre, axes, angle, label, rng)
        drawn.append(label)
        if rng.random() < 0.5:  # a part: a smaller ellipse inside, off the centre
            part = len(parent)
            parent.append(label)
            inner = (max(int(axes[0] * 0.4), 2), max(int(axes[1] * 0.4), 2))
            shift = (int(axes[0] * 0.3 * np.cos(np.radians(angle))), int(axes[0] * 0.3 * np.sin(np.radians(angle))))
            _ellipse(labels, out, (centre[0] + shift[0], centre[1] + shift[1]), inner, angle, part, rng)
    parent_arr = np.array(parent, dtype=np.int64)
    present = np.bincount(parent_arr[labels].ravel(), minlength=len(parent))
    visible = tuple(k for k in drawn if present[k] >= 64)  # an object hidden by later ones is not there
    return Scene(out, labels, parent_arr, visible, background)


def _ellipse(labels, rgb, centre, axes, angle, label, rng) -> None:
    canvas = np.zeros(labels.shape, dtype=np.uint8)
    cv2.ellipse(canvas, centre, axes, angle, 0, 360, 1, thickness=-1)
    inside = canvas.astype(bool)
    labels[inside] = label
    rgb[inside] = rng.integers(0, 256, 3, dtype=np.uint8)


class OracleSam:
    """A SAM stage (``set_image`` / ``predict``, as ``MaskGenerator`` uses them) that answers a point prompt of
    ``scene`` with the regions under it (see the module doc). ``seconds`` and ``prompts`` count ``predict``."""

    def __init__(self, scene: Scene) -> None:
        from pipeline.sam.upsample import Upsampler

        self.scene = scene
        self.threshold = 0.0
        self.upsampler = Upsampler(scene.labels.shape)  # MobileSAM's (Ultralytics' profile), 256 x 256 logits
        self.lowres = _lowres_labels(scene.labels, self.upsampler)
        self._everything = tuple(range(len(scene.parent)))
        self._rows: dict[tuple[int, ...], int] = {}
        self._maps: list[torch.Tensor] = []
        self._stacked: torch.Tensor | None = None
        self.prompts = 0
        self.seconds = 0.0

    def set_image(self, rgb: np.ndarray):
        if rgb.shape != self.scene.rgb.shape:
            raise ValueError(f"the oracle knows one image of shape {self.scene.rgb.shape}, got {rgb.shape}")
        return SimpleNamespace(upsampler=self.upsampler)

    def _index(self, labels: tuple[int, ...]) -> int:
        """The row of ``labels``' sharp logits in ``self._maps`` (made on first use)."""
        if labels not in self._rows:
            self._rows[labels] = len(self._maps)
            self._maps.append(torch.where(torch.from_numpy(np.isin(self.lowres, labels)), SHARP, -SHARP).float())
            self._stacked = None
        return self._rows[labels]

    def predict(self, embedding, *, points, point_labels, multimask):
        from pipeline.sam.segmenter import Prediction

        if not multimask or not np.all(np.asarray(point_labels) == 1):
            raise ValueError("the oracle answers single positive points with three candidates")
        t = time.perf_counter()
        s = self.scene
        rows, scores = [], []
        for ((x, y),) in np.asarray(points):
            label = int(s.labels[min(int(y), s.labels.shape[0] - 1), min(int(x), s.labels.shape[1] - 1)])
            owner = int(s.parent[label])
            whole = tuple(int(k) for k in np.flatnonzero(s.parent == owner))
            first = (label,) if label != owner else whole
            rows.append([self._index(first), self._index(whole), self._index(self._everything)])
            scores.append([0.9 if owner < s.background else 0.95, 0.94 if owner >= s.background else 0.89, 0.3])
        if self._stacked is None:
            self._stacked = torch.stack(self._maps)
        logits = self._stacked[torch.as_tensor(rows, dtype=torch.long).reshape(-1, 3)]
        self.prompts += len(rows)
        self.seconds += time.perf_counter() - t
        return Prediction(logits, np.array(scores, np.float32).reshape(-1, 3), self.threshold, self.upsampler)


def _lowres_labels(labels: np.ndarray, upsampler) -> np.ndarray:
    """int (L, L): the region at the image pixel each low-res logit cell stands for (the centre of the image pixels
    it is resized onto, from the upsampler's own matrices); -1 on the padding no image pixel reads."""
    out = []
    for matrix, size in ((upsampler.ry, labels.shape[0]), (upsampler.rx, labels.shape[1])):
        m = matrix.cpu().numpy().astype(np.float64)  # (size, L)
        weight = m.sum(axis=0)
        centre = (np.arange(size)[:, None] * m).sum(axis=0) / np.where(weight > 0, weight, 1)
        out.append((np.clip(np.rint(centre), 0, size - 1).astype(np.int64), weight > 0))
    (rows, row_ok), (cols, col_ok) = out
    low = labels[rows[:, None], cols[None, :]].astype(np.int64)
    low[~(row_ok[:, None] & col_ok[None, :])] = -1
    return low
