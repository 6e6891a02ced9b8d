"""Prompts as SAM was trained with them: a jittered box, then corrective clicks from the error region.

Pure functions of numpy arrays and a ``numpy.random.Generator``: the same generator state gives the
same prompts, so a training run is reproducible and resumable.
"""

from __future__ import annotations

import numpy as np

#: Point label of a click on the object (SAM's convention), of a click on the background, and of "no click".
POSITIVE, NEGATIVE, NO_CLICK = 1, 0, -1


def jitter_boxes(xyxy: np.ndarray, hw: tuple[int, int], rng: np.random.Generator, *, fraction: float) -> np.ndarray:
    """Move each edge of each box by Gaussian noise, as SAM's training does to its box prompts.

    Each edge moves by ``N(0, (fraction x side)^2)``, ``side`` being the box's width for the x edges
    and its height for the y edges, cut at two standard deviations. The boxes are then clipped to
    the image and kept at least one pixel wide and high.

    Args:
        xyxy: float (N, 4) boxes (x_min, y_min, x_max, y_max) in pixels of an image of size ``hw``.
        hw: (H, W) of the image.
        rng: the source of the noise.
        fraction: standard deviation of an edge's shift as a fraction of the box side; 0 returns the boxes
            clipped to the image.

    Returns:
        float32 (N, 4) boxes inside ``[0, W] x [0, H]``.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    h, w = hw
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)[:, [0, 1, 0, 1]]
    noise = np.clip(rng.standard_normal(boxes.shape), -2.0, 2.0) * fraction * np.maximum(sides, 1.0)
    out = boxes + noise
    limit = np.array([w, h, w, h], dtype=np.float64)
    out = np.clip(out, 0.0, limit)
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        # an edge pair that crossed or touched: re-centre a 1-pixel box on the pair, inside the image
        thin = out[:, hi] - out[:, lo] < 1.0
        centre = np.clip((out[thin, lo] + out[thin, hi]) / 2, 0.5, max(size - 0.5, 0.5))
        out[thin, lo], out[thin, hi] = centre - 0.5, centre + 0.5
    return np.clip(out, 0.0, limit).astype(np.float32)


def sample_clicks(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One corrective click per object, drawn uniformly from where the prediction is wrong.

    A pixel the prediction missed (in ``target``, not in ``pred``) gives a positive click, a pixel it
    wrongly included (in ``pred``, not in ``target``) a negative one, as in SAM's interactive training:
    each error pixel is equally likely. An object predicted without error gets no click.

    Args:
        pred: bool (N, h, w) predicted masks.
        target: bool (N, h, w) true masks on the same grid.
        rng: draws the pixel.

    Returns:
        ``(xy, labels)``: float32 (N, 2) click positions as (column, row) pixel indices of the grid, and
        int64 (N,) labels: ``POSITIVE`` (1), ``NEGATIVE`` (0), or ``NO_CLICK`` (-1, position 0, 0).
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target must both be (N, h, w) bool arrays, got {pred.shape} and {target.shape}")
    n, _, w = pred.shape
    xy = np.zeros((n, 2), dtype=np.float32)
    labels = np.full(n, NO_CLICK, dtype=np.int64)
    for k in range(n):
        error = np.flatnonzero(pred[k] != target[k])
        if error.size == 0:
            continue
        flat = int(error[rng.integers(error.size)])
        row, col = divmod(flat, w)
        xy[k] = (col, row)
        labels[k] = POSITIVE if target[k].flat[flat] else NEGATIVE
    return xy, labels
