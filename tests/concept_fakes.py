"""A fake concept model whose answer depends on the phrase, and scenes of coloured discs for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.masks import CropMask
from pipeline.types import Instances

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


class FakeConceptModel:
    """Each phrase finds the discs of its colour (``colours[phrase]``) with score ``scores[phrase]``; a phrase
    without a colour finds nothing, unless an exemplar is tied to it: then it finds the discs of the colour at
    the exemplar box's centre, with score 0.8. Masks are the discs' pixels, boxes their tight boxes."""

    def __init__(self, colours: dict[str, tuple], scores: dict[str, float]) -> None:
        self.colours, self.scores = colours, scores
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, rgb: np.ndarray, phrases: Sequence[str], exemplars: Sequence = ()) -> list[Instances]:
        self.calls.append((list(phrases), len(exemplars)))
        out = []
        for phrase in phrases:
            colour, score = self.colours.get(phrase), self.scores.get(phrase, 0.8)
            for e in exemplars:  # pipeline.concepts.exemplar.Exemplar: boxes (K, 4) in e.image (None: this image)
                if e.phrase == phrase:
                    x0, y0, x1, y1 = (int(round(v)) for v in e.xyxy[0])
                    image = rgb if e.image is None else e.image
                    colour = tuple(int(v) for v in image[(y0 + y1) // 2, (x0 + x1) // 2])
            out.append(_discs(rgb, colour, score) if colour is not None else Instances.empty())
        return out


def _discs(rgb: np.ndarray, colour: tuple, score: float) -> Instances:
    hit = np.all(rgb == np.array(colour, dtype=np.uint8), axis=-1).astype(np.uint8)
    n, labels = cv2.connectedComponents(hit, connectivity=8)
    masks = [CropMask.from_full(labels == k) for k in range(1, n)]
    return Instances(
        xyxy=np.array([m.xyxy for m in masks], dtype=np.float32).reshape(-1, 4),
        class_id=np.zeros(len(masks)),
        confidence=np.full(len(masks), score),
        masks=tuple(masks),
    )


def disc_scene(discs: Sequence[tuple[int, int, int, tuple]], hw=(96, 128)) -> np.ndarray:
    """RGB uint8 with filled discs (cx, cy, r, colour) on grey."""
    im = np.full((*hw, 3), 120, np.uint8)
    for cx, cy, r, colour in discs:
        cv2.circle(im, (cx, cy), r, colour, -1)
    return im


def disc_photos(root: Path) -> Path:
    """Four PNG scenes of red, blue and green discs."""
    root.mkdir(parents=True, exist_ok=True)
    scenes = {
        "a.png": [(30, 30, 12, RED), (90, 60, 15, BLUE)],
        "b.png": [(40, 50, 18, RED), (100, 30, 10, RED), (70, 75, 9, GREEN)],
        "c.png": [(64, 48, 20, BLUE)],
        "d.png": [(20, 70, 10, GREEN), (90, 40, 14, RED)],
    }
    for name, discs in scenes.items():
        Image.fromarray(disc_scene(discs)).save(root / name)
    return root
