"""The central data types: one image's instances, and the record of one image through the pipeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


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
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray = None  # type: ignore[assignment]
    masks: tuple[CropMask | None, ...] = None  # type: ignore[assignment]
    mask_score: np.ndarray = None  # type: ignore[assignment]
    source_id: np.ndarray = None  # type: ignore[assignment]

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
        )

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
class ImageItem:
    """One input image and where it goes in the dataset.

    Attributes:
        path: the source file.
        rel: its path relative to the source root, POSIX style; identifies it across runs.
        name: output file name (unique per dataset, stem unique case-insensitively).
        split: dataset split, e.g. ``"train"``.
        instances: instances known from a source dataset (``convert``): ``Instances``, or a callable
            ``(H, W) -> Instances`` for labels stored relative to the image size; ``None`` for images
            the detector labels.
    """

    path: Path
    rel: str
    name: str
    split: str
    instances: Instances | Callable[[tuple[int, int]], Instances] | None = field(default=None, compare=False)
