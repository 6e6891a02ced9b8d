"""Fake stages for the proposal tests: a detector that misses the smallest disc, and a generator that finds every
disc (both picklable, for Ray)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.types import CropMask, Instances
from tests.conftest import FakeDetector, draw_scene

#: Three discs (cx, cy, r); the detector below misses the smallest, the third.
THREE_DISCS = ((40, 40, 15), (110, 70, 22), (60, 95, 9))


def discs(rgb: np.ndarray) -> list[tuple[CropMask, int]]:
    """Each bright connected part of ``rgb`` (R > 200) as a mask, with its area, in label order."""
    bright = (rgb[..., 0] > 200).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    return [(CropMask.from_full(labels == k), int(stats[k, cv2.CC_STAT_AREA])) for k in range(1, n)]


class MissingDetector(FakeDetector):
    """``FakeDetector`` that misses the smallest disc of each image with more than one."""

    def __call__(self, rgb: np.ndarray) -> Instances:
        found = super().__call__(rgb)
        parts = discs(rgb)
        if len(parts) < 2:
            return found
        smallest = min(range(len(parts)), key=lambda k: parts[k][1])
        keep = np.ones(len(found), dtype=bool)
        keep[smallest] = False  # FakeDetector boxes the parts in label order, its tiny extra box last
        return found[keep]


class FakeGenerator:
    """Every bright disc as a mask (class 0, tight box, score 0.95 - k / 100, stability 0.97); with ``parts``,
    also the upper half of each disc (a part SAM's grid would find inside an object).

    ``calls`` counts the images; ``covered`` records how many instances each call was given.
    """

    def __init__(self, parts: bool = False) -> None:
        self.parts = parts
        self.calls = 0
        self.covered: list[int] = []

    def __call__(self, rgb: np.ndarray, covered: Instances | None = None) -> Instances:
        self.calls += 1
        self.covered.append(-1 if covered is None else len(covered))
        masks = [m for m, _ in discs(rgb)]
        if self.parts:
            halves = []
            for m in masks:
                bits = m.bits.copy()
                bits[bits.shape[0] // 2 :] = False
                halves.append(CropMask.from_full(_place(bits, m, rgb.shape[:2])))
            masks += halves
        n = len(masks)
        return Instances(
            xyxy=np.array([m.xyxy for m in masks], dtype=np.float32).reshape(-1, 4),
            class_id=np.zeros(n, dtype=np.int64),
            masks=tuple(masks),
            mask_score=0.95 - np.arange(n) / 100,
            extras={"stability_score": np.full(n, 0.97)},
        )


def _place(bits: np.ndarray, like: CropMask, hw: tuple[int, int]) -> np.ndarray:
    full = np.zeros(hw, dtype=bool)
    full[like.y0 : like.y0 + bits.shape[0], like.x0 : like.x0 + bits.shape[1]] = bits
    return full


def make_three_disc_images(root: Path, n: int = 1) -> Path:
    """``n`` (at most 32) different images of three discs each (shifted a little per image) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shifted = tuple((cx + i % 8, cy + i // 8, r) for cx, cy, r in THREE_DISCS)  # each image its own
        Image.fromarray(draw_scene(hw=(120, 160), discs=shifted)).save(root / f"img_{i:02d}.png")
    return root
