"""The central data types: one image's instances, and the record of one image through the pipeline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipeline import safepath


class CropMask:
    """A binary mask kept as its tight crop, run-length encoded, so memory follows the object's outline.

    A 6000 x 4000 mask covering half the image takes a few kilobytes here instead of 24 MB, so an
    image with hundreds of instances holds them all at little cost. ``bits`` decodes on demand.

    Args:
        bits: bool array (h, w), the mask inside its box; (0, 0) for an empty mask.
        x0: column of ``bits[:, 0]`` in the image, in pixels.
        y0: row of ``bits[0, :]`` in the image, in pixels.
    """

    __slots__ = ("_rle", "_shape", "_area", "x0", "y0")

    def __init__(self, bits: np.ndarray, x0: int = 0, y0: int = 0) -> None:
        bits = np.asarray(bits)
        if bits.dtype != np.bool_ or bits.ndim != 2:
            raise ValueError(f"CropMask.bits must be a 2-D bool array, got {bits.dtype} {bits.shape}")
        set_ = object.__setattr__
        set_(self, "x0", int(x0))
        set_(self, "y0", int(y0))
        set_(self, "_shape", (int(bits.shape[0]), int(bits.shape[1])))
        set_(self, "_rle", mask_utils.encode(np.asfortranarray(bits, dtype=np.uint8)) if bits.size else None)
        set_(self, "_area", int(mask_utils.area(self._rle)) if bits.size else 0)

    def __setattr__(self, name, value):
        raise AttributeError("CropMask is immutable")

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:  # pickle (a Ray worker sends masks to the next stage)
        for name, value in zip(self.__slots__, state, strict=True):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"CropMask(shape={self._shape}, x0={self.x0}, y0={self.y0}, area={self._area})"

    @property
    def bits(self) -> np.ndarray:
        """bool array (h, w): the mask inside its box (decoded on each access)."""
        if self._rle is None:
            return np.zeros(self._shape, dtype=bool)
        return mask_utils.decode(self._rle).astype(bool)

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the crop."""
        return self._shape

    @classmethod
    def from_full(cls, mask: np.ndarray) -> CropMask:
        """Crop a full-image bool mask (H, W) to its tight box."""
        mask = np.asarray(mask, dtype=bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return cls(np.zeros((0, 0), dtype=bool))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(mask[y0:y1, x0:x1], int(x0), int(y0))

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return self._area

    def to_json(self) -> dict | None:
        """The crop as JSON: ``{"x0", "y0", "h", "w", "counts"}`` (COCO compressed RLE of the crop); None if empty."""
        if self._rle is None:
            return None
        h, w = self._shape
        return {"x0": self.x0, "y0": self.y0, "h": h, "w": w, "counts": self._rle["counts"].decode("ascii")}

    @classmethod
    def from_json(cls, data: dict | None) -> CropMask:
        """Inverse of ``to_json`` (nothing is decoded: the RLE is kept as it is)."""
        if data is None:
            return cls(np.zeros((0, 0), dtype=bool))
        self = cls.__new__(cls)
        set_ = object.__setattr__
        h, w = int(data["h"]), int(data["w"])
        set_(self, "x0", int(data["x0"]))
        set_(self, "y0", int(data["y0"]))
        set_(self, "_shape", (h, w))
        set_(self, "_rle", {"size": [h, w], "counts": str(data["counts"]).encode("ascii")})
        set_(self, "_area", int(mask_utils.area(self._rle)))
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CropMask):
            return NotImplemented
        return self.xyxy == other.xyxy and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """Box (x_min, y_min, x_max, y_max) of the crop in pixel-edge coordinates: x_max is exclusive."""
        h, w = self._shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    def full(self, hw: tuple[int, int]) -> np.ndarray:
        """The mask as a full bool array of shape ``hw`` (H, W); parts outside the image are dropped."""
        out = np.zeros(hw, dtype=bool)
        h, w = self._shape
        y1, x1 = min(self.y0 + h, hw[0]), min(self.x0 + w, hw[1])
        if y1 > self.y0 and x1 > self.x0:
            out[self.y0 : y1, self.x0 : x1] = self.bits[: y1 - self.y0, : x1 - self.x0]
        return out


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
    """The labeled objects of one source image; ``to_instances`` places them once the image's size is known.

    Attributes:
        objects: the objects in source order.
        declared_hw: (H, W) the source says the image has (COCO's height/width); None where the format
            does not say.
    """

    objects: tuple[SourceObject, ...] = ()
    declared_hw: tuple[int, int] | None = None

    def to_instances(self, hw: tuple[int, int], *, resegment: bool = False) -> Instances:
        """Instances in pixels of an image of size ``hw`` (H, W).

        Source masks (polygons, or an RLE of this size) are kept unless ``resegment``; objects without
        one, or with an RLE made for another image size, get ``None`` (SAM makes it from the box).
        """
        from pipeline.masks import polygons_to_mask, rle_to_mask

        if not self.objects:
            return Instances.empty()
        h, w = hw
        scale = np.array([w, h, w, h], dtype=np.float64)
        masks: list[CropMask | None] = []
        for o in self.objects:
            if resegment or not o.has_mask:
                masks.append(None)
            elif o.rle is not None and list(o.rle["size"]) == [h, w]:
                masks.append(rle_to_mask(o.rle))
            elif o.polygons_n:
                masks.append(CropMask.from_full(polygons_to_mask([p * [w, h] for p in o.polygons_n], hw)))
            else:
                masks.append(None)
        return Instances(
            xyxy=np.array([o.xyxy_n for o in self.objects]) * scale,
            class_id=[o.class_id for o in self.objects],
            masks=tuple(masks),
            source_id=[o.source_id for o in self.objects],
        )


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

    def __post_init__(self) -> None:
        # paths are built from split and name, and a journal line is untrusted input
        safepath.split(self.split, what=f"image {self.rel!r}: split")
        safepath.component(self.name, what=f"image {self.rel!r}: file name")
        if self.status not in ("ok", "skipped"):
            raise ValueError(f"ImageRecord.status: expected 'ok' or 'skipped', got {self.status!r}")
        if len(self.segmentations) != len(self.instances):
            raise ValueError(
                f"ImageRecord: {len(self.instances)} instances but {len(self.segmentations)} segmentations"
            )
        if len(self.dropped_reasons) != len(self.dropped):
            raise ValueError(
                f"ImageRecord: {len(self.dropped)} dropped instances but {len(self.dropped_reasons)} reasons"
            )

    @classmethod
    def skipped(cls, item: ImageItem, reason: str) -> ImageRecord:
        return cls(
            rel=item.rel, name=item.name, split=item.split, source=str(item.path), status="skipped", reason=reason
        )

    def to_json(self) -> dict:
        """The journal form (JSON-ready); ``from_json`` gives back an equal record."""
        out = {"rel": self.rel, "name": self.name, "split": self.split, "source": self.source, "status": self.status}
        if self.status != "ok":
            return {**out, "reason": self.reason}
        out.update(height=self.hw[0], width=self.hw[1], rotated=self.rotated)
        out["instances"] = [
            {**_instance_json(self.instances, i), "segmentation": seg} for i, seg in enumerate(self.segmentations)
        ]
        out["dropped"] = [{**_instance_json(self.dropped, i), "reason": r} for i, r in enumerate(self.dropped_reasons)]
        out["problems"] = [p.to_dict() for p in self.problems]
        if self.reviewed:  # only then: records of runs without review keep their exact form
            out["reviewed"] = True
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
        class_id=[r["class_id"] for r in rows],
        confidence=[nan if r["confidence"] is None else r["confidence"] for r in rows],
        mask_score=[nan if r["mask_score"] is None else r["mask_score"] for r in rows],
        masks=tuple(None if r["mask"] is None else CropMask.from_json(r["mask"]) for r in rows),
        source_id=[r["id"] for r in rows],
        extras=extras,
    )
