"""One finished image: its ``ImageRecord`` (pure) and its files (the image, the YOLO label file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Settings
from pipeline.formats import coco, layout, yolo
from pipeline.images import LoadedImage, export_image
from pipeline.masks import mask_to_polygons, mask_to_rle, merge_polygons
from pipeline.types import ImageItem, ImageRecord, Instances, Problem


def to_record(
    item: ImageItem, image: LoadedImage, instances: Instances, settings: Settings
) -> tuple[ImageRecord, list[str]]:
    """The record of one segmented image and its YOLO label lines.

    Every instance is kept, in order, unless its mask has no polygon (empty or None): those are the
    record's ``dropped`` instances, with the reason.
    """
    hw = image.hw
    keep, segmentations, lines = [], [], []
    for i in range(len(instances)):
        mask = instances.masks[i]
        parts = mask_to_polygons(mask, tolerance=settings.simplify) if mask is not None else []
        if not parts:
            continue
        keep.append(i)
        lines.append(yolo.to_line(int(instances.class_id[i]), merge_polygons(parts), hw))
        rle = mask_to_rle(mask, hw) if settings.coco_masks == "rle" else None
        segmentations.append(coco.to_segmentation(parts if rle is None else None, rle))
    dropped = np.setdiff1d(np.arange(len(instances)), keep)
    problems = ()
    declared = item.labels.declared_hw if item.labels is not None else None
    if declared is not None and tuple(declared) != tuple(hw):
        problems = (_size_mismatch(item, declared, hw),)
    record = ImageRecord(
        rel=item.rel,
        name=item.name,
        split=item.split,
        source=str(item.path),
        hw=hw,
        rotated=image.rotated,
        instances=instances[np.array(keep, dtype=np.int64)],
        segmentations=tuple(segmentations),
        dropped=instances[dropped],
        dropped_reasons=("empty mask",) * len(dropped),
        problems=problems,
    )
    return record, lines


def write_files(
    record: ImageRecord, item: ImageItem, image: LoadedImage, lines: list[str], out: Path, settings: Settings
) -> None:
    """The image (copied, linked, or re-encoded upright) and, for YOLO, its label file (atomic writes), where
    ``settings.layout`` puts them."""
    paths = layout.get(settings.layout)
    export_image(item.path, image, out / paths.image(record.split, record.name), link=settings.link)
    if "yolo" in settings.formats:
        yolo.write_label_file(out / paths.label_file(record.split, record.name), lines)


def coco_annotations(record: ImageRecord) -> list[dict]:
    """The COCO annotations of one record, in label-file order."""
    inst = record.instances
    return [
        coco.to_annotation(
            class_id=int(inst.class_id[i]),
            segmentation=record.segmentations[i],
            area=inst.masks[i].area,
            mask_xyxy=inst.masks[i].xyxy,
            det_xyxy=inst.xyxy[i].tolist(),
            confidence=float(inst.confidence[i]),
            mask_score=float(inst.mask_score[i]),
            source_id=int(inst.source_id[i]),
            extras={k: v[i].tolist() for k, v in inst.extras.items()},
        )
        for i in range(len(inst))
    ]


def _size_mismatch(item: ImageItem, declared: tuple[int, int], hw: tuple[int, int]) -> Problem:
    """Labels made for another image size than the file's (after EXIF rotation)."""
    return Problem(
        where=str(item.path),
        problem=f"labels are for a {declared[1]}x{declared[0]} image, the file is {hw[1]}x{hw[0]} "
        "(width x height, upright)",
        action="coordinates scaled to the file's size; masks made for the other size redone by SAM from their box",
    )
