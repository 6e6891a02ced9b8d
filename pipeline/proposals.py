"""Proposals: the generator's masks that no instance of the image accounts for (``--propose``).

A generated mask is a *proposal* when, for every instance of the image (with a mask),

- its IoU with the instance is below ``propose_iou`` (else it *is* that instance), and
- less than ``MOSTLY_INSIDE`` of its own area lies inside the instance (else it is a part of it: a wheel of a
  detected car, a face of a detected person; SAM's grid finds such parts at every point inside an object).

The second test is one-sided on purpose: a generated mask that *contains* a smaller instance (a table under a
detected cup) is still a proposal, since the larger object is what was missed.
"""

from __future__ import annotations

import numpy as np

from pipeline.masks import crop_intersection
from pipeline.types import Instances

#: Share of a generated mask's area inside one instance from which it counts as a part of that instance.
MOSTLY_INSIDE = 0.8


def select_proposals(generated: Instances, instances: Instances, *, iou: float) -> Instances:
    """The generated masks that overlap no instance (see the module docstring), in generator order.

    Args:
        generated: the generator's masks of the image (``GeneratorStage``), masks filled.
        instances: the image's instances; those without a mask (or an empty one) cover nothing.
        iou: ``propose_iou``: from this IoU with an instance, a generated mask is that instance.

    Returns:
        The proposals: ``class_id`` 0, ``source_id`` 0..K-1 (their ids in the record and in review),
        ``xyxy`` each mask's tight box, the generator's ``mask_score``, ``confidence`` and ``extras``.
    """
    covers = [m for m in instances.masks if m is not None and m.area > 0]
    keep = []
    for k, mask in enumerate(generated.masks):
        if mask is None or mask.area == 0:
            continue
        if all(_apart(mask, other, iou=iou) for other in covers):
            keep.append(k)
    found = generated[np.array(keep, dtype=np.int64)]
    boxes = [m.xyxy for m in found.masks]  # type: ignore[union-attr]  # kept masks are filled
    return found.replace(
        xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        class_id=np.zeros(len(found), dtype=np.int64),
        source_id=np.arange(len(found)),
    )


def _apart(mask, other, *, iou: float) -> bool:
    """``mask`` is neither ``other`` (IoU >= ``iou``) nor mostly inside it."""
    inter = crop_intersection(mask, other)
    if inter == 0:
        return True
    union = mask.area + other.area - inter
    return inter / union < iou and inter / mask.area < MOSTLY_INSIDE
