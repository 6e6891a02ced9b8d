"""COCO instances: pure annotation/category builders and a streaming file writer."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline import fsio
from pipeline.masks import mask_to_rle
from pipeline.types import CropMask


def categories(names: Sequence[str]) -> list[dict]:
    """COCO categories in data.yaml's order: class ``i`` is category id ``i + 1`` (0 stays unused)."""
    return [{"id": i + 1, "name": str(n), "supercategory": "none"} for i, n in enumerate(names)]


def to_coco_annotation(
    *,
    class_id: int,
    mask: CropMask,
    polygons: Sequence[np.ndarray],
    hw: tuple[int, int],
    encoding: str = "polygon",
    det_xyxy: Sequence[float] | None = None,
    confidence: float = math.nan,
    mask_score: float = math.nan,
) -> dict:
    """One COCO annotation (without ``id`` / ``image_id``, which the writer assigns).

    Args:
        class_id: index into data.yaml's names (category id is ``class_id + 1``).
        mask: the instance mask; ``area`` is its pixel count and ``bbox`` its tight box.
        polygons: the mask's outline parts (``pipeline.masks.mask_to_polygons``), used when
            ``encoding == "polygon"``.
        hw: (H, W) of the image.
        encoding: ``"polygon"`` (every part) or ``"rle"`` (compressed, lossless).
        det_xyxy: the prompt box (x_min, y_min, x_max, y_max), kept as ``det_bbox`` in COCO xywh.
        confidence: detector confidence (omitted when NaN).
        mask_score: SAM's predicted IoU (omitted when NaN).
    """
    x0, y0, x1, y1 = mask.xyxy
    if encoding == "rle":
        segmentation: list | dict = mask_to_rle(mask, hw)
    else:
        segmentation = [[_num(v) for v in np.asarray(p).reshape(-1)] for p in polygons]
    ann = {
        "category_id": int(class_id) + 1,
        "segmentation": segmentation,
        "area": int(mask.area),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
    }
    if det_xyxy is not None:
        a, b, c, d = (float(v) for v in det_xyxy)
        ann["det_bbox"] = [_num(a), _num(b), _num(c - a), _num(d - b)]
    if not math.isnan(confidence):
        ann["confidence"] = round(float(confidence), 6)
    if not math.isnan(mask_score):
        ann["mask_score"] = round(float(mask_score), 6)
    return ann


def _num(v: float) -> float | int:
    r = round(float(v), 3)
    return int(r) if r == int(r) else r


def write_coco(
    path: Path,
    *,
    names: Sequence[str],
    images: Iterable[tuple[dict, list[dict]]],
) -> tuple[int, int]:
    """Stream a COCO instances file atomically; images and annotations get ids 1, 2, ... in order.

    Args:
        path: the ``_annotations.coco.json`` to write.
        names: class names in data.yaml's order.
        images: ``(image, annotations)`` pairs; ``image`` holds ``file_name``, ``height``, ``width``
            and any extra fields; annotations come from ``to_coco_annotation``.

    Returns:
        (number of images, number of annotations).
    """
    n_images = n_anns = 0
    with fsio.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "samlabel"}, "licenses": [],\n"categories": ')
        f.write(json.dumps(categories(names), ensure_ascii=False))
        f.write(',\n"images": [')
        ann_file = tmp.with_suffix(".anns")
        try:
            with open(ann_file, "w+", encoding="utf-8") as anns:
                for image, annotations in images:
                    n_images += 1
                    f.write(
                        ("," if n_images > 1 else "") + "\n" + json.dumps({"id": n_images, **image}, ensure_ascii=False)
                    )
                    for a in annotations:
                        n_anns += 1
                        anns.write(("," if n_anns > 1 else "") + "\n")
                        anns.write(json.dumps({"id": n_anns, "image_id": n_images, **a}, ensure_ascii=False))
                f.write('\n],\n"annotations": [')
                anns.seek(0)
                while chunk := anns.read(1 << 20):
                    f.write(chunk)
        finally:
            ann_file.unlink(missing_ok=True)
        f.write("\n]}\n")
    return n_images, n_anns
