"""The SAM stage's masks, scores and stability scores as digests, to check that a change keeps them exactly.

    python bench/mask_check.py DATA SAM_RIGGED SAM_PLAIN        # prints JSON {config/image: digest}

Run by ``bench/throughput.py --masks-vs REF`` once with this tree's ``pipeline`` and once with REF's (a
``git archive`` of it on ``PYTHONPATH``), on the same machine, images and checkpoints; the digests must be
equal. Floats are compared as bits, which is right here: same machine, same inputs, the question is whether
the code computes the same thing (across machines, SAM's floats differ in the last bits and so may masks).

Uses only what every version of the stage has: ``Segmenter(weights, runtime=, multimask=)`` called on
``Instances``, and ``pipeline.images.load_image``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

#: (checkpoint, runtime, multimask, images): the rigged checkpoint of the timings (every mask the whole image),
#: and a plain random-weight one whose masks follow image and box, on both runtimes and with a multimask choice.
CONFIGS = (
    ("rigged", "onnx", "off", 16),
    ("plain", "onnx", "off", 16),
    ("plain", "torch", "off", 3),
    ("plain", "onnx", "box-fit", 3),
)


def boxes_of(data: Path, image: Path, hw: tuple[int, int]) -> np.ndarray:
    """The YOLO boxes of one image of ``data`` (images/ + labels/) as float32 (N, 4) xyxy pixels."""
    rows = np.loadtxt(data / "labels" / (image.stem + ".txt"), ndmin=2)[:, 1:]
    xyxy = np.hstack([rows[:, :2] - rows[:, 2:] / 2, rows[:, :2] + rows[:, 2:] / 2])
    return (xyxy * [hw[1], hw[0], hw[1], hw[0]]).astype(np.float32)


def digest(instances) -> str:
    """sha256 over each mask's place, shape and bits, the SAM scores and every extra (stability ...)."""
    h = hashlib.sha256()
    for m in instances.masks:
        h.update(repr((m.x0, m.y0, m.bits.shape)).encode())
        h.update(np.ascontiguousarray(m.bits, dtype=bool).tobytes())
    h.update(np.asarray(instances.mask_score, dtype=np.float32).tobytes())
    for name in sorted(instances.extras):
        h.update(name.encode())
        h.update(np.asarray(instances.extras[name], dtype=np.float64).tobytes())
    return h.hexdigest()


def capture(data: Path, weights: dict[str, Path]) -> dict[str, str]:
    from pipeline.images import load_image
    from pipeline.sam import Segmenter
    from pipeline.types import Instances

    paths = sorted((data / "images").iterdir())
    out = {}
    for ckpt, runtime, multimask, count in CONFIGS:
        seg = Segmenter(str(weights[ckpt]), device="cpu", runtime=runtime, multimask=multimask)
        for p in paths[:count]:
            rgb = load_image(p).rgb
            xyxy = boxes_of(data, p, rgb.shape[:2])
            n = len(xyxy)
            inst = Instances(xyxy=xyxy, class_id=np.zeros(n, np.int64), confidence=np.ones(n, np.float32))
            out[f"{ckpt}/{runtime}/{multimask}/{p.name}"] = digest(seg(rgb, inst))
    return out


def main() -> None:
    data, rigged, plain = (Path(a) for a in sys.argv[1:4])
    json.dump(capture(data, {"rigged": rigged, "plain": plain}), sys.stdout, indent=0, sort_keys=True)


if __name__ == "__main__":
    main()
