"""One finished image: its ``ImageRecord`` (pure) and its files (the image, the YOLO label file)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import safepath
from pipeline.config import Settings
from pipeline.formats import coco, layout, yolo
from pipeline.images import LoadedImage, export_image
from pipeline.masks import CropMask, mask_to_polygons, mask_to_rle, merge_polygons
from pipeline.quality import QUALITY_FIELDS, WRITTEN_SIGNALS, compute_signals, flag
from pipeline.types import DROP_REASON, ImageItem, ImageRecord, Instances, Problem, stack_instances

__all__ = ["QUALITY_FIELDS", "InstanceFiles", "coco_annotations", "instance_files", "to_record", "with_quality",
           "write_files"]  # fmt: skip


def with_quality(instances: Instances, hw: tuple[int, int], settings: Settings) -> Instances:
    """``instances`` with their quality signals and flags in ``extras`` (``pipeline.quality``).

    The SAM stage may have put ``stability_score`` in ``extras`` already (it needs the logits); ``duplicate``
    marks the worse of two overlapping instances (by confidence x mask score), so dropping duplicates keeps one.
    """
    s = compute_signals(
        instances.masks,
        instances.xyxy,
        hw,
        mask_score=instances.mask_score,
        stability=instances.extras.get("stability_score"),
    )
    rank = np.nan_to_num(instances.confidence, nan=1.0) * np.nan_to_num(instances.mask_score, nan=1.0)
    flags = np.empty(len(instances), dtype=object)
    flags[:] = flag(s, settings.thresholds, rank=rank)
    partner = s["overlap_with"]
    overlap_id = np.where(partner >= 0, instances.source_id[np.maximum(partner, 0)], -1)
    signals = {k: np.round(s[k], 4) if s[k].dtype.kind == "f" else s[k] for k in WRITTEN_SIGNALS}
    return instances.with_extras(**signals, overlap_source_id=overlap_id, flags=flags)


@dataclass(frozen=True)
class InstanceFiles:
    """What one image's instances become in its files (``instance_files``).

    Attributes:
        instances: the instances the files hold, in file order, with their quality signals and flags.
        segmentations: per kept instance, its COCO ``segmentation`` (polygons or RLE, ``settings.coco_masks``).
        lines: per kept instance, its YOLO-seg label line.
        dropped: the instances left out, with their signals; ``dropped_reasons`` says why, one per instance.
        dropped_at: the index in the given instances of each dropped one.
    """

    instances: Instances
    segmentations: tuple
    lines: list[str]
    dropped: Instances
    dropped_reasons: tuple[str, ...]
    dropped_at: tuple[int, ...]


def instance_files(
    instances: Instances, hw: tuple[int, int], settings: Settings, *, drop_flags: Collection[str]
) -> InstanceFiles:
    """The one step from an image's instances to what its files hold (a run and a review save both take it).

    Every instance gets its quality signals and flags, and is kept, in order, unless its mask has no
    polygon (empty or None) or it carries one of ``drop_flags``.

    Args:
        instances: the image's instances, masks in image pixels.
        hw: (H, W) of the upright image.
        settings: ``simplify`` (polygon tolerance), ``coco_masks`` and ``thresholds`` are used.
        drop_flags: flags that drop an instance (a run: ``settings.drop_flags``; a review: none).
    """
    instances, withheld, held_reasons = _withheld(instances)
    given = np.flatnonzero(~withheld)  # the index in the given instances of each one considered below
    if withheld.any():
        held = instances[withheld]
        instances = instances[given]
    instances = with_quality(instances, hw, settings)
    keep, segmentations, lines, dropped, reasons = [], [], [], [], []
    drop = set(drop_flags)
    for i in range(len(instances)):
        mask = instances.masks[i]
        flagged = [f for f in instances.extras["flags"][i] if f in drop]
        if flagged:
            dropped.append(i)
            reasons.append(f"flagged {','.join(flagged)} (--drop-flags)")
            continue
        parts = mask_to_polygons(mask, tolerance=settings.simplify) if mask is not None else []
        if mask is None or not parts:
            dropped.append(i)
            reasons.append("empty mask")
            continue
        keep.append(i)
        lines.append(yolo.to_line(int(instances.class_id[i]), merge_polygons(parts), hw))
        rle = mask_to_rle(mask, hw) if settings.coco_masks == "rle" else None
        segmentations.append(coco.to_segmentation(parts if rle is None else None, rle))
    dropped_instances = instances[np.array(dropped, dtype=np.int64)]
    dropped_at = [int(given[i]) for i in dropped]
    if withheld.any():  # a stage's own drops (DROP_REASON), after the files' own, without quality signals
        dropped_instances = stack_instances([dropped_instances, held])
        reasons += held_reasons
        dropped_at += np.flatnonzero(withheld).tolist()
    return InstanceFiles(
        instances=instances[np.array(keep, dtype=np.int64)],
        segmentations=tuple(segmentations),
        lines=lines,
        dropped=dropped_instances,
        dropped_reasons=tuple(reasons),
        dropped_at=tuple(dropped_at),
    )


def _withheld(instances: Instances) -> tuple[Instances, np.ndarray, list[str]]:
    """``instances`` without ``extras[DROP_REASON]``, which of them a stage dropped (a reason, not None), and why."""
    given = instances.extras.get(DROP_REASON)
    if given is None:
        return instances, np.zeros(len(instances), dtype=bool), []
    withheld = np.array([r is not None for r in given], dtype=bool)
    rest = instances.replace(extras={k: v for k, v in instances.extras.items() if k != DROP_REASON})
    return rest, withheld, [str(r) for r in given[withheld]]


def to_record(
    item: ImageItem,
    image: LoadedImage,
    instances: Instances,
    settings: Settings,
    *,
    proposals: Instances | None = None,
) -> tuple[ImageRecord, list[str]]:
    """The record of one segmented image and its YOLO label lines (``instance_files`` with
    ``settings.drop_flags``: the dropped instances are the record's ``dropped``, with the reason).

    ``proposals`` (``--propose``) are kept in the record only, never in the label lines."""
    hw = image.hw
    files = instance_files(instances, hw, settings, drop_flags=settings.drop_flags)
    problems: tuple[Problem, ...] = ()
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
        instances=files.instances,
        segmentations=files.segmentations,
        dropped=files.dropped,
        dropped_reasons=files.dropped_reasons,
        problems=problems,
        proposals=proposals if proposals is not None else Instances.empty(),
    )
    return record, files.lines


def write_files(
    record: ImageRecord, item: ImageItem, image: LoadedImage, lines: list[str], out: Path, settings: Settings
) -> None:
    """The image (copied, linked, or re-encoded upright) and, for YOLO, its label file (atomic writes), where
    ``settings.layout`` puts them."""
    paths = layout.get(settings.layout)
    dst = safepath.inside(out, paths.image(record.split, record.name), what="image")
    export_image(item.path, image, dst, link=settings.link)
    if "yolo" in settings.formats:
        label = paths.label_file(record.split, record.name)
        yolo.write_label_file(safepath.inside(out, label, what="label file"), lines)


def coco_annotations(record: ImageRecord) -> list[dict]:
    """The COCO annotations of one record, in label-file order."""
    inst = record.instances
    return [
        coco.to_annotation(
            class_id=int(inst.class_id[i]),
            segmentation=record.segmentations[i],
            area=_kept_mask(record, i).area,
            mask_xyxy=_kept_mask(record, i).xyxy,
            det_xyxy=inst.xyxy[i].tolist(),
            confidence=float(inst.confidence[i]),
            mask_score=float(inst.mask_score[i]),
            source_id=int(inst.source_id[i]),
            extras=_coco_extras(inst, i),
        )
        for i in range(len(inst))
    ]


def _kept_mask(record: ImageRecord, i: int) -> CropMask:
    """The mask of kept instance ``i`` (every instance in the label files has one)."""
    mask = record.instances.masks[i]
    if mask is None:
        raise ValueError(f"{record.rel}: kept instance {i} has no mask (only dropped instances may lack one)")
    return mask


def _coco_extras(inst: Instances, i: int) -> dict:
    """The extra annotation fields of instance ``i``: its quality signals and any others (NaN / None left out)."""
    out = {}
    for key, values in inst.extras.items():
        value = values[i].tolist() if hasattr(values[i], "tolist") else values[i]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        out[key] = value
    return out


def _size_mismatch(item: ImageItem, declared: tuple[int, int], hw: tuple[int, int]) -> Problem:
    """Labels made for another image size than the file's (after EXIF rotation)."""
    return Problem(
        where=str(item.path),
        problem=f"labels are for a {declared[1]}x{declared[0]} image, the file is {hw[1]}x{hw[0]} "
        "(width x height, upright)",
        action="coordinates scaled to the file's size; masks made for the other size redone by SAM from their box",
    )
