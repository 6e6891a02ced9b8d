"""A source dataset's labels of one image (``SourceLabels``, normalised) placed on the image as ``Instances``."""

from __future__ import annotations

import numpy as np

from pipeline.masks import CropMask, polygons_to_mask, rle_to_mask
from pipeline.types import Instances, SourceLabels


def to_instances(labels: SourceLabels, hw: tuple[int, int], *, resegment: bool = False) -> Instances:
    """Instances in pixels of an image of size ``hw`` (H, W).

    Source masks (polygons, or an RLE of this size) are kept unless ``resegment``; objects without
    one, or with an RLE made for another image size, get ``None`` (SAM makes it from the box).
    """
    if not labels.objects:
        return Instances.empty()
    h, w = hw
    scale = np.array([w, h, w, h], dtype=np.float64)
    masks: list[CropMask | None] = []
    for o in labels.objects:
        if resegment or not o.has_mask:
            masks.append(None)
        elif o.rle is not None and list(o.rle["size"]) == [h, w]:
            masks.append(rle_to_mask(o.rle))
        elif o.polygons_n:
            masks.append(CropMask.from_full(polygons_to_mask([p * [w, h] for p in o.polygons_n], hw)))
        else:
            masks.append(None)
    return Instances(
        xyxy=np.array([o.xyxy_n for o in labels.objects]) * scale,
        class_id=np.array([o.class_id for o in labels.objects], dtype=np.int64),
        masks=tuple(masks),
        source_id=np.array([o.source_id for o in labels.objects], dtype=np.int64),
    )
