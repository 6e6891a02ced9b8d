"""Example boxes of a wanted object: SAM 3's visual prompt ("more like these")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Exemplar:
    """Boxes that show what one phrase means, in the image being labelled or in another image.

    A model encodes an exemplar with an ``image`` once (the same object passed on every call is not encoded
    again: pass the same ``Exemplar`` objects to every call of a run); one without an image is encoded on each
    image it is passed with, its boxes being in that image.

    Attributes:
        phrase: the phrase (an entry of the ``phrases`` passed with it) these boxes illustrate; ``""`` for a
            class with boxes and no name (SAM 3's "visual" prompt).
        xyxy: float32 (K, 4) boxes in absolute pixels of their image, (x_min, y_min, x_max, y_max).
        image: uint8 (H, W, 3) RGB image the boxes are in; ``None``: the image being labelled.
        positive: bool (K,) True for "like this", False for "not like this" (default all True).
    """

    phrase: str
    xyxy: np.ndarray
    image: np.ndarray | None = None
    positive: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4) if np.size(self.xyxy) else np.zeros((0, 4))
        if len(xyxy) == 0:
            raise ValueError(f"Exemplar {self.phrase!r}: expected at least one box (K, 4), got none")
        if not np.isfinite(xyxy).all() or (xyxy[:, 2:] <= xyxy[:, :2]).any():
            raise ValueError(f"Exemplar {self.phrase!r}: boxes must be finite (x_min, y_min, x_max, y_max) with "
                             f"x_max > x_min and y_max > y_min, got {xyxy.tolist()}")  # fmt: skip
        positive = np.ones(len(xyxy), dtype=bool) if self.positive is None else np.asarray(self.positive, dtype=bool)
        if positive.shape != (len(xyxy),):
            raise ValueError(f"Exemplar {self.phrase!r}: positive must have one entry per box ({len(xyxy)}), "
                             f"got shape {positive.shape}")  # fmt: skip
        if self.image is not None:
            image = np.asarray(self.image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"Exemplar {self.phrase!r}: image must be uint8 (H, W, 3) RGB, got "
                                 f"{image.dtype} {image.shape}")  # fmt: skip
        object.__setattr__(self, "xyxy", xyxy.astype(np.float32))
        object.__setattr__(self, "positive", positive)
