"""Cost of the per-instance quality signals (pipeline.quality) next to SAM's decoder (~25 ms a box on CPU).

    python bench/quality_signals.py            # 20 masks of ~100x100 on a 640x480 image
    python bench/quality_signals.py --masks 300 --repeat 20

The masks are ellipses of 80-120 px with a few specks (so ``parts`` has work), placed so that
neighbours overlap (so ``overlap`` compares real pairs), with prompt boxes a few pixels off. Prints
the best of ``--repeat`` timings of ``compute_signals`` + ``flag`` in microseconds per instance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.quality import compute_signals, flag  # noqa: E402
from pipeline.types import CropMask  # noqa: E402


def scene(n: int, hw: tuple[int, int], rng: np.random.Generator):
    h, w = hw
    masks, boxes = [], []
    for _ in range(n):
        ax, ay = rng.integers(40, 61, size=2)
        cx, cy = int(rng.integers(ax, w - ax)), int(rng.integers(ay, h - ay))
        full = np.zeros(hw, np.uint8)
        cv2.ellipse(full, (cx, cy), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        for _ in range(3):  # specks near the outline
            full[int(np.clip(cy + rng.integers(-ay - 4, ay + 4), 0, h - 1)), int(np.clip(cx + ax + 2, 0, w - 1))] = 1
        masks.append(CropMask.from_full(full.astype(bool)))
        boxes.append([cx - ax + rng.uniform(-3, 3), cy - ay + rng.uniform(-3, 3), cx + ax, cy + ay])
    return masks, np.array(boxes), rng.uniform(0.3, 1.0, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--hw", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    args = parser.parse_args()
    hw = tuple(args.hw)
    masks, boxes, scores = scene(args.masks, hw, np.random.default_rng(0))
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        flag(compute_signals(masks, boxes, hw, mask_score=scores, stability=scores))
        times.append(time.perf_counter() - t)
    best, median = min(times), float(np.median(times))
    mean_area = np.mean([m.area for m in masks])
    print(f"{args.masks} masks (mean area {mean_area:.0f} px) on {hw[1]}x{hw[0]}, best of {args.repeat}:")
    print(f"  compute_signals + flag: {best * 1e3:.2f} ms per image, {best / args.masks * 1e6:.0f} us per instance")
    print(f"  median: {median / args.masks * 1e6:.0f} us per instance (SAM decoder: ~25000 us per box)")


if __name__ == "__main__":
    main()
