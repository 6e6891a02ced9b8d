"""Seconds per image (encoder) and per box (decoder) of each SAM family on this machine's CPU.

Random-weight checkpoints of the real architectures (built by their authors' code, in a temporary
folder); each number is the minimum of ``--repeats`` runs, as the CPU may be shared. Prints a table.

    python bench/sam_families.py [--archs mobile_sam,sam_b,medsam,sam_hq_vit_tiny,sam_hq_vit_b] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import SamlabelError
from pipeline.sam import Segmenter
from pipeline.sam.build import build_arch
from pipeline.sam.profiles import EXTRA_ARCHS

BOXES = np.array([[40, 40, 300, 260], [200, 100, 600, 420], [10, 300, 200, 470], [350, 20, 630, 200]], np.float32)


def checkpoint(arch: str, folder: Path) -> Path:
    name = EXTRA_ARCHS[arch][2][0] if arch in EXTRA_ARCHS else f"{arch}.pt"
    path = folder / name
    torch.save(build_arch(arch).state_dict(), path)
    return path


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mobile_sam,sam_b,medsam,sam_hq_vit_tiny,sam_hq_vit_b")
    ap.add_argument("--runtimes", default="torch,onnx")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rgb = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    print(
        f"{'arch':<16} {'runtime':<8} {'encoder s/img':>14} {'decoder s/box':>14}  (min of {args.repeats}, 640x480, 4 boxes)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            path = checkpoint(arch, Path(tmp))
            for runtime in args.runtimes.split(","):
                try:
                    with contextlib.redirect_stderr(io.StringIO()):  # the ONNX exporter dumps its graph on failure
                        seg = Segmenter(str(path), runtime=runtime, cache_dir=Path(tmp) / "cache")
                except SamlabelError as e:
                    print(f"{arch:<16} {runtime:<8} {'not available: ' + str(e)[:90]}", flush=True)
                    continue
                emb = seg.set_image(rgb)
                enc = timed(lambda seg=seg: seg.set_image(rgb), args.repeats)
                dec = timed(lambda seg=seg, emb=emb: seg.predict(emb, boxes=BOXES).masks(), args.repeats) / len(BOXES)
                print(f"{arch:<16} {seg.runtime:<8} {enc:>14.2f} {dec:>14.3f}", flush=True)


if __name__ == "__main__":
    main()
