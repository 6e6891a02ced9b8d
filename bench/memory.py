"""Peak memory of a labeling run: does it grow with the number of images, or with boxes per image?

    python bench/memory.py            # prints a table; each case runs in its own process

Cases:
  images-N   N images of 640x480, real random-weight YOLOv8n detector (5 boxes each), and a stand-in
             segmenter whose masks are random ellipses of realistic size (the SAM encoder's memory is
             constant per image; this isolates what the pipeline keeps per image).
  big-300    one 6000x4000 image, 300 boxes, the real MobileSAM code rigged so every box gets the
             whole-image mask: the worst case for mask memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _models import ROOT, make_sam_checkpoint, make_yolo_checkpoint

CHILD = r"""
import sys, json, time, resource
sys.path.insert(0, {root!r})
import numpy as np, cv2
from PIL import Image
from pipeline import label, Instances, CropMask
case, n, work = {case!r}, {n}, {work!r}
from pathlib import Path
src = Path(work) / "src"; src.mkdir()
rng = np.random.default_rng(0)
if case == "images":
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(src / f"im_{{i:04d}}.jpg")
    class EllipseSAM:
        def __call__(self, rgb, inst):
            h, w = rgb.shape[:2]; masks = []
            for x0, y0, x1, y1 in inst.xyxy.astype(int):
                m = np.zeros((h, w), np.uint8)
                cv2.ellipse(m, ((x0 + x1) // 2, (y0 + y1) // 2), (max(2, (x1 - x0) // 2), max(2, (y1 - y0) // 2)), 0, 0, 360, 1, -1)
                masks.append(CropMask.from_full(m.astype(bool)))
            return inst.replace(masks=tuple(masks), mask_score=np.full(len(inst), 0.9))
    kw = dict(detector={det!r}, segmenter=EllipseSAM(), max_det=5)
else:
    Image.fromarray(rng.integers(0, 255, (4000, 6000, 3), dtype=np.uint8)).save(src / "big.png", compress_level=1)
    class Boxes:
        names = ["thing"]
        def __call__(self, rgb):
            xy = rng.uniform(0, 1, (300, 2)) * [5000, 3000]
            return Instances(xyxy=np.hstack([xy, xy + 1000]), class_id=np.zeros(300), confidence=np.full(300, 0.5))
    kw = dict(detector=Boxes(), segmenter={sam!r}, sam_batch=32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
r = label(src, Path(work) / "out", progress=False, device="cpu", **kw)
print(json.dumps(dict(seconds=time.perf_counter() - t, instances=r.report["instances_total"],
                      peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_case(case: str, n: int, det: Path, sam: Path) -> dict:
    with tempfile.TemporaryDirectory() as work:
        code = CHILD.format(root=str(ROOT), case=case, n=n, work=work, det=str(det), sam=str(sam))
        env = {**os.environ, "SAMLABEL_CACHE_DIR": str(Path(work) / "onnx-cache")}  # not the user's cache
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="20,200", help="image counts to compare")
    ap.add_argument("--skip-big", action="store_true", help="skip the 300-box 24-megapixel case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        det = make_yolo_checkpoint(Path(wd) / "det.pt", ["thing"])
        sam = make_sam_checkpoint(Path(wd) / "mobile_sam.pt")
        rows = [(f"images-{n}", run_case("images", int(n), det, sam)) for n in args.images.split(",")]
        if not args.skip_big:
            rows.append(("big-300 (6000x4000, 300 whole-image masks)", run_case("big", 1, det, sam)))
    print(f"{'case':46s} {'peak RSS MiB':>12s} {'instances':>10s} {'seconds':>8s}")
    for name, r in rows:
        print(f"{name:46s} {r['peak_mib']:12.0f} {r['instances']:10d} {r['seconds']:8.1f}")


if __name__ == "__main__":
    main()
