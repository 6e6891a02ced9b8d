"""How good are the masks of each segmenter setting? One `samlabel evaluate` row per setting, same data.

    python bench/quality.py                                   # synthetic shapes with exact GT masks
    python bench/quality.py --gt my_gt_dataset/ --segmenter sam_b.pt --segmenter finetuned.pt --sam-arch sam_b

Each setting runs `samlabel convert --resegment` on the GT dataset (its boxes become SAM prompts, its
masks are replaced by SAM's), then `evaluate` compares the result with the GT. Without --segmenter, a
random-weight MobileSAM is built (real architecture, meaningless masks: the numbers then only show
that the bench works; give real weights for real numbers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _models import ROOT  # noqa: F401  (puts the repo on sys.path)
from PIL import Image


def synthetic_gt(root: Path, n: int = 8) -> Path:
    """A COCO dataset of discs and rectangles with exact polygon masks (train split)."""
    from tests.roboflow import disc_polygon

    rng = np.random.default_rng(0)
    images, anns = [], []
    (root / "train").mkdir(parents=True)
    for i in range(n):
        im = np.full((240, 320, 3), 30, np.uint8)
        name = f"shapes_{i}.png"
        images.append({"id": i + 1, "file_name": name, "height": 240, "width": 320})
        for _ in range(3):
            cx, cy, r = int(rng.integers(40, 280)), int(rng.integers(40, 200)), int(rng.integers(12, 35))
            poly = disc_polygon(cx, cy, r)
            cv2.fillPoly(im, [poly.round().astype(np.int32)], (230, 200, 180))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": [poly.reshape(-1).tolist()],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
            )
        Image.fromarray(im).save(root / "train" / name)
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "shape"}]}
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    return root


def main() -> None:
    from pipeline import convert
    from pipeline.evaluate import evaluate
    from tests.checkpoints import make_plain_sam_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", help="ground-truth dataset with masks (default: synthetic shapes)")
    ap.add_argument("--segmenter", action="append", help="SAM weights (repeatable)")
    ap.add_argument("--sam-arch", help="architecture of the --segmenter files")
    ap.add_argument("--runtimes", default="torch,onnx")
    ap.add_argument("--multimask", default="off,score,box-fit")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        work = Path(wd)
        gt = Path(args.gt) if args.gt else synthetic_gt(work / "gt")
        weights = args.segmenter or [str(make_plain_sam_checkpoint(work / "w" / "mobile_sam.pt"))]
        print(f"GT: {gt}\n")
        print(
            f"{'segmenter':<28} {'runtime':<7} {'multimask':<9} {'AP':>6} {'AP50':>6} {'mIoU':>6} {'bIoU':>6} {'s/img':>6}"
        )
        settings = itertools.product(weights, args.runtimes.split(","), args.multimask.split(","))
        for k, (w, runtime, multimask) in enumerate(settings):
            out = work / f"out{k}"
            extra = {"sam_arch": args.sam_arch} if args.sam_arch else {}
            t = time.perf_counter()
            result = convert(
                gt,
                out,
                segmenter=w,
                runtime=runtime,
                multimask=multimask,
                resegment=True,
                progress=False,
                cache_dir=str(work / "cache"),
                **extra,
            )
            n = sum(result.report["images"].values())
            seconds = (time.perf_counter() - t) / max(n, 1)
            r = evaluate(out, gt)
            print(
                f"{Path(w).name:<28} {runtime:<7} {multimask:<9} {_f(r['segm']['AP'])} {_f(r['segm']['AP50'])} "
                f"{_f(r['mask_iou']['mean'])} {_f(r['boundary_iou']['mean'])} {seconds:6.2f}"
            )


def _f(v) -> str:
    return f"{v:6.3f}" if v is not None else "     -"


if __name__ == "__main__":
    main()
