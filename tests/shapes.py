"""Synthetic segmentation datasets: bright discs, rectangles and ellipses on a dark, noisy background.

Each object's mask is exact (drawn, then kept only where no later object covers it), written as a
COCO RLE (``write_coco_split``) or a YOLO-seg polygon (``write_yolo_dataset``). Everything is drawn
from a ``numpy.random.Generator`` seeded by the caller: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from pipeline.masks import mask_to_polygons, mask_to_rle
from pipeline.types import CropMask

NAMES = ["disc", "rectangle", "ellipse"]


def draw_shapes(
    rng: np.random.Generator,
    hw: tuple[int, int] = (96, 128),
    *,
    objects: tuple[int, int] = (1, 3),
    radius: tuple[float, float] = (0.1, 0.25),
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its objects; each shape's radius is drawn in ``radius`` x the image's shorter side.

    Returns:
        uint8 (H, W, 3) RGB image and ``[(class id, bool (H, W) mask), ...]`` (masks non-empty).
    """
    h, w = hw
    image = np.full((h, w, 3), 25, np.int16) + rng.integers(-12, 13, (h, w, 3))
    shapes: list[tuple[int, np.ndarray]] = []
    side = min(h, w)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        cls = int(rng.integers(len(NAMES)))
        mask = np.zeros((h, w), np.uint8)
        r = int(rng.integers(int(side * radius[0]), int(side * radius[1])))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        if cls == 0:
            cv2.circle(mask, (cx, cy), r, 1, -1)
        elif cls == 1:
            a, b = r, int(rng.integers(r // 2, r + 1))
            cv2.rectangle(mask, (cx - a, cy - b), (cx + a, cy + b), 1, -1)
        else:
            angle = float(rng.integers(0, 180))
            cv2.ellipse(mask, (cx, cy), (r, max(r // 2, 2)), angle, 0, 360, 1, -1)
        mask = mask.astype(bool)
        colour = rng.integers(150, 256, 3)
        image[mask] = colour + rng.integers(-10, 11, (int(mask.sum()), 3))
        shapes = [(c, m & ~mask) for c, m in shapes]
        shapes.append((cls, mask))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, [(c, m) for c, m in shapes if m.sum() >= 12]


def write_coco_split(
    folder: Path,
    n: int,
    rng: np.random.Generator,
    *,
    hw=(96, 128),
    prefix: str = "img",
    objects=(1, 3),
    radius=(0.1, 0.25),
) -> Path:
    """``n`` images in ``folder`` with ``folder/_annotations.coco.json`` (RLE masks), Roboflow's COCO layout."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        image, shapes = draw_shapes(rng, hw, objects=objects, radius=radius)
        name = f"{prefix}{i:03d}.png"
        Image.fromarray(image).save(folder / name)
        images.append({"id": i + 1, "file_name": name, "height": hw[0], "width": hw[1]})
        for cls, mask in shapes:
            crop = CropMask.from_full(mask)
            rle = mask_to_rle(crop, hw)
            x0, y0, x1, y1 = crop.xyxy
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                }
            )
    categories = [{"id": k + 1, "name": n_} for k, n_ in enumerate(NAMES)]
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_coco_dataset(
    root: Path, splits: dict[str, int], *, seed: int, hw=(96, 128), objects=(1, 3), radius=(0.1, 0.25)
) -> Path:
    """A Roboflow-style COCO export: ``root/<split>/`` with images and ``_annotations.coco.json`` each."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        write_coco_split(root / split, n, rng, hw=hw, prefix=f"{split}_", objects=objects, radius=radius)
    return root


def write_yolo_dataset(root: Path, splits: dict[str, int], *, seed: int, hw=(96, 128)) -> Path:
    """An Ultralytics YOLO-seg dataset: ``root/data.yaml``, ``root/<split>/images`` and ``labels``."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, objects = draw_shapes(rng, hw)
            name = f"{split}_{i:03d}"
            Image.fromarray(image).save(root / split / "images" / f"{name}.png")
            lines = []
            for cls, mask in objects:
                for poly in mask_to_polygons(CropMask.from_full(mask), tolerance=0.0)[:1]:
                    xy = (poly / [hw[1], hw[0]]).ravel()
                    lines.append(" ".join([str(cls), *(f"{v:.6f}" for v in xy)]))
            (root / split / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(root), "names": dict(enumerate(NAMES))}
    data.update({("val" if s == "valid" else s): f"{s}/images" for s in splits})
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root


def disc_scene(hw: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3): a colour ramp with a red disc (centre (60, 60), radius 35) and seeded noise, for SAM
    families' reference comparisons (not square shapes make resize, padding and crop matter)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    rgb = np.stack([xx * 255 / hw[1], yy * 255 / hw[0], np.full(hw, 90.0)], axis=-1)
    rgb[(yy - 60) ** 2 + (xx - 60) ** 2 < 35**2] = (230, 40, 40)
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of one shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
