"""The central data types: one image's instances, and the record of one image through the pipeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline import safepath
from pipeline.masks import MAX_RLE_COUNTS_CHARS, CropMask, parse_rle_counts


@dataclass(frozen=True)
class Instances:
    """The objects found in one image; index ``i`` of every field describes the same object.

    Attributes:
        xyxy: float32 (N, 4) prompt boxes in absolute pixels, (x_min, y_min, x_max, y_max).
        class_id: int64 (N,) indices into the dataset's class names.
        confidence: float32 (N,) detector confidence; NaN where the box came from a dataset.
        masks: N entries, a ``CropMask`` once segmented, ``None`` before.
        mask_score: float32 (N,) SAM's predicted IoU; NaN where no model scored the mask.
        source_id: int64 (N,) a stable id of each instance in its source (detector order or
            annotation id), carried through every stage so nothing is matched by position.
        extras: more per-instance arrays by name (quality signals, multimask candidates ...), each with
            N rows; selection and ``replace`` keep them aligned with the other fields.
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray = None  # type: ignore[assignment]
    masks: tuple[CropMask | None, ...] = None  # type: ignore[assignment]
    mask_score: np.ndarray = None  # type: ignore[assignment]
    source_id: np.ndarray = None  # type: ignore[assignment]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        set_ = object.__setattr__
        set_(self, "xyxy", _array("xyxy", self.xyxy, np.float32, (n, 4)))
        set_(self, "class_id", _array("class_id", self.class_id, np.int64, (n,)))
        defaults = {
            "confidence": np.full(n, np.nan),
            "mask_score": np.full(n, np.nan),
            "source_id": np.arange(n),
        }
        for name, default in defaults.items():
            value = default if getattr(self, name) is None else getattr(self, name)
            dtype = np.int64 if name == "source_id" else np.float32
            set_(self, name, _array(name, value, dtype, (n,)))
        masks = (None,) * n if self.masks is None else tuple(self.masks)
        if len(masks) != n:
            raise ValueError(f"Instances.masks: expected {n} entries (one per box), got {len(masks)}")
        set_(self, "masks", masks)
        extras = {}
        for name, value in dict(self.extras).items():
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(f"Instances.extras[{name!r}]: expected {n} rows (one per box), got shape {arr.shape}")
            extras[str(name)] = arr
        set_(self, "extras", extras)

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Instances:
        """No instances."""
        return cls(xyxy=np.zeros((0, 4)), class_id=np.zeros(0))

    def __getitem__(self, index: np.ndarray | slice | list[int]) -> Instances:
        """Select instances by boolean mask, index array or slice; every field is selected together."""
        idx = np.arange(len(self))[index]
        return Instances(
            xyxy=self.xyxy[idx],
            class_id=self.class_id[idx],
            confidence=self.confidence[idx],
            masks=tuple(self.masks[i] for i in idx),
            mask_score=self.mask_score[idx],
            source_id=self.source_id[idx],
            extras={k: v[idx] for k, v in self.extras.items()},
        )

    def with_extras(self, **arrays: np.ndarray) -> Instances:
        """A copy with per-instance arrays added to (or replacing some of) ``extras``."""
        return self.replace(extras={**self.extras, **arrays})

    def replace(self, **changes) -> Instances:
        """A copy with some fields replaced (the original is never mutated)."""
        return dataclasses.replace(self, **changes)


#: ``Instances.extras`` key by which a stage leaves instances out of the label files: one ``str`` reason per
#: instance (``None`` keeps it). The dropped ones are listed, with the reason, in report.json (a concept run
#: drops an object found again by another phrase this way: ``pipeline.concepts.stage``).
DROP_REASON = "drop_reason"


@runtime_checkable
class DetectorStage(Protocol):
    """The detector stage (``pipeline.detect.Detector``, or a test's fake): one image in, its instances out.

    Attributes:
        names: the class names that ``Instances.class_id`` indexes.
    """

    @property
    def names(self) -> Sequence[str]: ...

    def __call__(self, rgb: np.ndarray) -> Instances:
        """Instances (boxes, classes, confidences; no masks) of ``rgb``, uint8 (H, W, 3)."""
        ...


@runtime_checkable
class SegmenterStage(Protocol):
    """The SAM stage (``pipeline.sam.Segmenter``, or a test's fake): fills the masks of an image's instances."""

    def __call__(self, rgb: np.ndarray, instances: Instances) -> Instances:
        """``instances`` of ``rgb`` (uint8 (H, W, 3)) with every ``None`` mask made from its box."""
        ...


@runtime_checkable
class GeneratorStage(Protocol):
    """Class-agnostic masks of a whole image (SAM's automatic mask generator, or a test's fake).

    Used by ``--mode everything`` (every mask an instance of one class) and by ``--propose`` (masks that
    overlap no instance are proposals: what the detector missed).
    """

    def __call__(self, rgb: np.ndarray, covered: Instances | None = None) -> Instances:
        """Every object found in ``rgb`` (uint8 (H, W, 3)): ``class_id`` 0, masks filled, ``mask_score`` =
        SAM's predicted IoU, ``xyxy`` = each mask's tight box; signals (``stability`` ...) in ``extras``.

        ``covered``: instances the image already has (with masks); a generator may skip the prompts that fall
        inside them, since they cannot lead to an object not yet there.
        """
        ...


@runtime_checkable
class ConceptModel(Protocol):
    """A promptable-concept model (SAM 3, or a test's fake): every instance of each phrase in an image."""

    def __call__(self, rgb: np.ndarray, phrases: Sequence[str], exemplars: Sequence = ()) -> list[Instances]:
        """One ``Instances`` per phrase, in ``phrases`` order: ``class_id`` 0, masks filled, ``xyxy`` the
        masks' boxes, ``confidence`` the model's score (SAM 3: presence x instance score), unthresholded
        beyond the model's own floor. ``exemplars``: example boxes of wanted objects ("more like these").
        A phrase's text encoding is computed once per model, not once per image.
        """
        ...


def _array(name: str, value, dtype, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.size == 0 and shape[0] == 0:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"Instances.{name}: expected shape {shape}, got {arr.shape}")
    return arr


@dataclass(frozen=True)
class Problem:
    """One problem met in the input, where it is and what was done about it (``report.json`` lists them)."""

    where: str
    problem: str
    action: str

    def to_dict(self) -> dict:
        return {"where": self.where, "problem": self.problem, "action": self.action}


@dataclass(frozen=True)
class SourceObject:
    """One labeled object of a source dataset, in coordinates normalised to its image.

    Attributes:
        class_id: index into the dataset's names.
        xyxy_n: (x_min, y_min, x_max, y_max) in [0, 1].
        polygons_n: outline parts, float (K, 2) normalised (x, y); empty for a box-only object.
        rle: a COCO RLE (absolute, for an image of ``rle["size"]``), or ``None``.
        source_id: YOLO line number or COCO annotation id.
    """

    class_id: int
    xyxy_n: tuple[float, float, float, float]
    polygons_n: tuple[np.ndarray, ...] = ()
    rle: dict | None = None
    source_id: int = 0

    @property
    def has_mask(self) -> bool:
        return bool(self.polygons_n) or self.rle is not None


@dataclass(frozen=True)
class SourceLabels:
    """The labeled objects of one source image; ``pipeline.sources.labels.to_instances`` places them once the
    image's size is known.

    Attributes:
        objects: the objects in source order.
        declared_hw: (H, W) the source says the image has (COCO's height/width); None where the format
            does not say.
    """

    objects: tuple[SourceObject, ...] = ()
    declared_hw: tuple[int, int] | None = None


@dataclass(frozen=True)
class ImageItem:
    """One input image and where it goes in the dataset.

    Attributes:
        path: the source file.
        rel: its path relative to the source root, POSIX style; identifies it across runs.
        name: output file name (unique per dataset, stem unique case-insensitively).
        split: dataset split, e.g. ``"train"``.
        labels: the objects a source dataset gives for it (``convert``); ``None`` for an image the
            detector labels (``label``).
    """

    path: Path
    rel: str
    name: str
    split: str
    labels: SourceLabels | None = field(default=None, compare=False)

    def with_labels(self, labels: SourceLabels | None) -> ImageItem:
        return dataclasses.replace(self, labels=labels)


@dataclass(frozen=True)
class ImageRecord:
    """One image's finished result: what its files hold, what the journal keeps and the report counts.

    Attributes:
        rel, name, split, source: the image's identity (``ImageItem.rel``), output name, split and source path.
        status: ``"ok"`` (written) or ``"skipped"`` (unreadable; ``reason`` says why).
        hw: (H, W) of the upright image.
        rotated: EXIF orientation changed the pixels (the image was re-encoded upright).
        instances: the instances in the label files, in file order, each with its mask.
        segmentations: per instance, its COCO ``segmentation`` as written (polygons or RLE).
        dropped: instances left out of the label files; ``dropped_reasons`` says why, one per instance.
        problems: problems that only the image file showed (labels made for another image size).
        reviewed: a person checked the image in ``samlabel review`` (False in records written before review existed).
        proposals: masks the automatic generator found that overlap no instance (``--propose``): what the
            detector or the source's annotators missed. Never in the label files; ``class_id`` 0 (no class
            yet), ``mask_score`` the generator's, each with a non-empty mask inside the image (None only in a
            light record).
    """

    rel: str
    name: str
    split: str
    source: str
    status: str = "ok"
    reason: str | None = None
    hw: tuple[int, int] | None = None
    rotated: bool = False
    instances: Instances = field(default_factory=Instances.empty)
    segmentations: tuple = ()
    dropped: Instances = field(default_factory=Instances.empty)
    dropped_reasons: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    reviewed: bool = False
    proposals: Instances = field(default_factory=Instances.empty)

    def __post_init__(self) -> None:
        # paths are built from split and name, and a journal line is untrusted input
        safepath.split(self.split, what=f"image {self.rel!r}: split")
        safepath.component(self.name, what=f"image {self.rel!r}: file name")
        if self.status not in ("ok", "skipped"):
            raise ValueError(f"ImageRecord.status: expected 'ok' or 'skipped', got {self.status!r}")
        if self.status == "ok" and self.hw is None:
            raise ValueError(f"ImageRecord {self.rel!r}: a written ('ok') image needs its size hw (H, W)")
        if len(self.segmentations) != len(self.instances):
            raise ValueError(
                f"ImageRecord: {len(self.instances)} instances but {len(self.segmentations)} segmentations"
            )
        if len(self.dropped_reasons) != len(self.dropped):
            raise ValueError(
                f"ImageRecord: {len(self.dropped)} dropped instances but {len(self.dropped_reasons)} reasons"
            )
        if len(self.proposals):
            _check_proposals(self)

    @classmethod
    def skipped(cls, item: ImageItem, reason: str) -> ImageRecord:
        return cls(
            rel=item.rel, name=item.name, split=item.split, source=str(item.path), status="skipped", reason=reason
        )

    def to_json(self) -> dict:
        """The journal form (JSON-ready); ``from_json`` gives back an equal record."""
        out: dict[str, object] = {"rel": self.rel, "name": self.name, "split": self.split, "source": self.source}
        out["status"] = self.status
        if self.status != "ok":
            return {**out, "reason": self.reason}
        assert self.hw is not None  # __post_init__: a written image has its size
        out.update(height=self.hw[0], width=self.hw[1], rotated=self.rotated)
        out["instances"] = [
            {**_instance_json(self.instances, i), "segmentation": seg} for i, seg in enumerate(self.segmentations)
        ]
        out["dropped"] = [{**_instance_json(self.dropped, i), "reason": r} for i, r in enumerate(self.dropped_reasons)]
        out["problems"] = [p.to_dict() for p in self.problems]
        if self.reviewed:  # only then: records of runs without review keep their exact form
            out["reviewed"] = True
        if len(self.proposals):  # only then: records of runs without --propose keep their exact form
            out["proposals"] = [_instance_json(self.proposals, i) for i in range(len(self.proposals))]
        return out

    @classmethod
    def from_json(cls, data: dict) -> ImageRecord:
        head = {k: data[k] for k in ("rel", "name", "split", "source", "status")}
        if data["status"] != "ok":
            return cls(**head, reason=data.get("reason"))
        kept, dropped = data["instances"], data["dropped"]
        return cls(
            **head,
            hw=(int(data["height"]), int(data["width"])),
            rotated=bool(data["rotated"]),
            instances=_instances_from_json(kept),
            segmentations=tuple(d["segmentation"] for d in kept),
            dropped=_instances_from_json(dropped),
            dropped_reasons=tuple(d["reason"] for d in dropped),
            problems=tuple(Problem(**p) for p in data["problems"]),
            reviewed=bool(data.get("reviewed", False)),
            proposals=_proposals_from_json(data.get("proposals", []), (int(data["height"]), int(data["width"]))),
        )


def stack_instances(parts: Sequence[Instances]) -> Instances:
    """The instances of ``parts``, one part after the other, in the form the journal reads them back.

    ``extras`` holds every key any part has (sorted); a part without a key gets None (NaN) there, and each
    column is typed as ``ImageRecord.from_json`` types it (numbers as a numeric array, others as objects),
    so a record built from the result equals its own journal round trip.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return Instances.empty()
    keys = sorted({k for p in parts for k in p.extras})
    extras = {
        k: _extras_array([_json_value(p.extras[k][i]) if k in p.extras else None for p in parts for i in range(len(p))])
        for k in keys
    }
    return Instances(
        xyxy=np.concatenate([p.xyxy for p in parts]),
        class_id=np.concatenate([p.class_id for p in parts]),
        confidence=np.concatenate([p.confidence for p in parts]),
        masks=tuple(m for p in parts for m in p.masks),
        mask_score=np.concatenate([p.mask_score for p in parts]),
        source_id=np.concatenate([p.source_id for p in parts]),
        extras=extras,
    )


def _float_or_none(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _instance_json(instances: Instances, i: int) -> dict:
    mask = instances.masks[i]
    return {
        "id": int(instances.source_id[i]),
        "class_id": int(instances.class_id[i]),
        "xyxy": [float(v) for v in instances.xyxy[i]],
        "confidence": _float_or_none(instances.confidence[i]),
        "mask_score": _float_or_none(instances.mask_score[i]),
        "mask": mask.to_json() if mask is not None else None,
        "extras": {k: _json_value(v[i]) for k, v in instances.extras.items()},
    }


def _json_value(value):
    """One extras entry as JSON: numpy scalars as Python numbers, NaN as null, arrays and lists as lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _extras_array(values: list) -> np.ndarray:
    """Inverse of ``_json_value`` over N rows: numbers (null = NaN) as a numeric array, anything else as objects."""
    if all(v is None or isinstance(v, (int, float)) for v in values):
        floats = any(v is None or isinstance(v, float) for v in values)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64 if floats else np.int64)
    if (
        all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in values)
        and len({len(v) for v in values}) == 1
    ):
        return np.array(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _instances_from_json(rows: list[dict]) -> Instances:
    if not rows:
        return Instances.empty()
    extras = {k: _extras_array([r["extras"][k] for r in rows]) for k in rows[0]["extras"]}
    nan = float("nan")
    return Instances(
        xyxy=np.array([r["xyxy"] for r in rows], dtype=np.float32),
        class_id=np.array([r["class_id"] for r in rows], dtype=np.int64),
        confidence=np.array([nan if r["confidence"] is None else r["confidence"] for r in rows], dtype=np.float32),
        mask_score=np.array([nan if r["mask_score"] is None else r["mask_score"] for r in rows], dtype=np.float32),
        masks=tuple(None if r["mask"] is None else CropMask.from_json(r["mask"]) for r in rows),
        source_id=np.array([r["id"] for r in rows], dtype=np.int64),
        extras=extras,
    )


def _check_proposals(record: ImageRecord) -> None:
    """Each proposal's mask is not empty and lies inside the image (review draws and accepts it as it is); a
    light record (``pipeline.run.report.light``) has none."""
    if record.status != "ok" or record.hw is None:
        raise ValueError(f"ImageRecord {record.rel!r}: a skipped image has no proposals")
    h, w = record.hw
    for i, mask in enumerate(record.proposals.masks):
        if mask is None:
            continue
        if mask.area == 0:
            raise ValueError(f"ImageRecord {record.rel!r}: proposal {i} has an empty mask")
        x0, y0, x1, y1 = mask.xyxy
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ValueError(
                f"ImageRecord {record.rel!r}: proposal {i}'s mask {mask.xyxy} lies outside the {w}x{h} image"
            )


def _proposals_from_json(rows: object, hw: tuple[int, int]) -> Instances:
    """A journal line's ``proposals`` (untrusted): a list of instance rows whose masks are checked before
    pycocotools reads them (run lengths that cover exactly the crop)."""
    if not isinstance(rows, list):
        raise ValueError(f"proposals: expected a list, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        mask = row.get("mask") if isinstance(row, dict) else None
        if not isinstance(mask, dict) or not isinstance(row.get("extras"), dict):
            raise ValueError(f"proposals[{i}]: expected an instance with a mask and extras")
        h, w, counts = mask.get("h"), mask.get("w"), mask.get("counts")
        if not (isinstance(h, int) and isinstance(w, int) and 0 < h <= hw[0] and 0 < w <= hw[1]):
            raise ValueError(f"proposals[{i}]: mask size {h!r}x{w!r} is not within the image's {hw}")
        if not isinstance(counts, str) or len(counts) > MAX_RLE_COUNTS_CHARS or sum(parse_rle_counts(counts)) != h * w:
            raise ValueError(f"proposals[{i}]: mask counts are not a COCO RLE of its {h}x{w} crop")
    return _instances_from_json(rows)
