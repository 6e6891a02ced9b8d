"""Throughput of samlabel against Ultralytics' own tools, on the same images, checkpoints and device.

    python bench/throughput.py                       # 8 images of 640x480, 5 boxes each, MobileSAM, CPU
    python bench/throughput.py --sam sam_b --device 0

Rows:
  convert  samlabel convert (each runtime)          vs ultralytics.data.converter.yolo_bbox2segment
  label    samlabel label   (each runtime)          vs ultralytics.data.annotator.auto_annotate
Each time is end to end (models loaded, images read, files written), the best of two runs after
one warm-up run that also builds the cached ONNX export. The checkpoints are the real architectures
with random weights (see tests/checkpoints.py): speed and shapes are real, masks are not meaningful.

Agreement with the PyTorch reference (Ultralytics' SAM predictor, same boxes): max abs difference
of the low-resolution mask logits and of the scores, and mask IoU where masks are non-empty, on a
plain random-weight checkpoint (not rigged), so the logits vary across the image.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _models import make_sam_checkpoint, make_yolo_checkpoint
from PIL import Image

ENCODER_GFLOP = {"mobile_sam": 77.5}  # per 1024x1024 input, the measurement


def cpu_peak_gflops() -> float:
    """This machine's float32 matmul rate with the threads the pipeline uses (best of 2048^3 and 4096^3)."""
    from pipeline.threads import torch_threads

    best = 0.0
    with torch_threads():
        for n in (2048, 4096):
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b
            best = max(best, 2 * n**3 / timed(lambda a=a, b=b: a @ b, 3) / 1e9)
    return best


def cpu_name() -> str:
    """CPU model and widest vector unit, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({isa})"


def make_images(root: Path, n: int, boxes: int, seed: int = 0) -> None:
    """n photos-like images (smooth noise) with YOLO box labels: images/ + labels/ + classes.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(root / "images" / f"im_{i:03d}.jpg", quality=90)
        lines = []
        for _ in range(boxes):
            w, h = rng.uniform(0.1, 0.4, 2)
            x, y = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            lines.append(f"0 {x:.5f} {y:.5f} {w:.5f} {h:.5f}")
        (root / "labels" / f"im_{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("thing\n")


def label_boxes(data: Path, image: Path) -> np.ndarray:
    """The YOLO boxes of one ``make_images`` image as (N, 4) xyxy pixels."""
    lines = np.loadtxt(data / "labels" / (image.stem + ".txt"), ndmin=2)[:, 1:]
    return np.hstack([lines[:, :2] - lines[:, 2:] / 2, lines[:, :2] + lines[:, 2:] / 2]) * [640, 480, 640, 480]


def timed(fn, repeats: int = 2) -> float:
    """Best of ``repeats`` runs (the machine is shared; the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_convert(data: Path, out: Path, sam: Path, device: str, runtime: str, **_) -> None:
    from pipeline import convert

    convert(data, out, segmenter=str(sam), device=device, runtime=runtime, progress=False)


def run_yolo_bbox2segment(data: Path, out: Path, sam: Path, device: str, **_) -> None:
    from ultralytics.data.converter import yolo_bbox2segment

    for cache in data.glob("*.cache"):
        cache.unlink()
    yolo_bbox2segment(str(data / "images"), save_dir=str(out), sam_model=str(sam), device=device)


def run_label(data: Path, out: Path, sam: Path, device: str, runtime: str, det: Path, boxes: int) -> None:
    from pipeline import label

    label(
        data / "images",
        out,
        detector=str(det),
        segmenter=str(sam),
        device=device,
        runtime=runtime,
        max_det=boxes,
        progress=False,
    )


def run_auto_annotate(data: Path, out: Path, sam: Path, device: str, det: Path, boxes: int, **_) -> None:
    from ultralytics.data.annotator import auto_annotate

    auto_annotate(
        data=str(data / "images"),
        det_model=str(det),
        sam_model=str(sam),
        device=device,
        max_det=boxes,
        output_dir=str(out),
    )


def measure(run, data: Path, work: Path, **kwargs) -> float:
    """Best-of-two end-to-end seconds of ``run`` on ``data``, after one warm-up run (it builds the ONNX
    cache and loads the libraries)."""
    out = work / "out"

    def once() -> None:
        shutil.rmtree(out, ignore_errors=True)
        run(data, out, **kwargs)

    once()
    return timed(once)


def encoder_seconds(sam: Path, device: str, runtime: str, repeats: int = 3) -> float:
    from pipeline.sam import Segmenter

    seg = Segmenter(str(sam), device=device, runtime=runtime)
    rgb = np.zeros((480, 640, 3), np.uint8)
    seg.set_image(rgb)
    return timed(lambda: seg.set_image(rgb), repeats)


def per_image_profile(sam: Path, data: Path, device: str, runtime: str, boxes: int, work: Path) -> dict[str, float]:
    """Seconds per image of each part of a convert run: the SAM stage split into encoder, decoder and
    upsampling (timed on the Segmenter directly), reading and writing from the run's report."""
    from pipeline import convert
    from pipeline.images import load_image
    from pipeline.sam import Segmenter

    seg = Segmenter(str(sam), device=device, runtime=runtime)
    paths = sorted((data / "images").iterdir())
    parts = {"encoder": 0.0, f"decoder ({boxes} boxes)": 0.0, "upsampling": 0.0}
    for p in paths:
        rgb = load_image(p).rgb
        xyxy = label_boxes(data, p)
        t0 = time.perf_counter()
        embedding = seg.set_image(rgb)
        t1 = time.perf_counter()
        pred = seg.predict(embedding, boxes=xyxy)
        t2 = time.perf_counter()
        pred.masks()
        t3 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[key] += dt / len(paths)
    out = work / "profile"
    shutil.rmtree(out, ignore_errors=True)
    report = convert(data, out, segmenter=str(sam), device=device, runtime=runtime, progress=False).report
    stages = report["timings"]["this_run"]["stage_seconds"]
    parts["read (in a thread)"] = stages.get("read", 0.0) / len(paths)
    parts["polygons + files (in a thread)"] = stages.get("write", 0.0) / len(paths)
    parts["end to end"] = 1 / report["timings"]["this_run"]["images_per_second"]
    return parts


def agreement(sam_plain: Path, data: Path, device: str, runtime: str) -> tuple[float, float, float]:
    """(max |logit diff|, max |score diff|, min IoU of non-empty masks) of ``runtime`` vs PyTorch."""
    from pipeline.images import load_image
    from pipeline.sam import Segmenter

    ref, fast = (Segmenter(str(sam_plain), device=device, runtime=r) for r in ("torch", runtime))
    d_logit = d_score = 0.0
    ious = []
    for img_path in sorted((data / "images").iterdir())[:3]:
        rgb = load_image(img_path).rgb
        hw = rgb.shape[:2]
        xyxy = label_boxes(data, img_path)
        p1, p2 = (s.predict(s.set_image(rgb), boxes=xyxy) for s in (ref, fast))
        d_logit = max(d_logit, (p1.logits - p2.logits).abs().max().item())
        d_score = max(d_score, float(np.abs(p1.scores - p2.scores).max()))
        for a, b in zip(p1.masks(), p2.masks(), strict=True):
            ma, mb = a.full(hw), b.full(hw)
            if ma.any() or mb.any():
                ious.append(np.logical_and(ma, mb).sum() / np.logical_or(ma, mb).sum())
    return d_logit, d_score, (min(ious) if ious else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--boxes", type=int, default=5)
    ap.add_argument("--sam", default="mobile_sam", help="architecture: mobile_sam, sam_b, sam2_t ...")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtimes", default="torch,onnx")
    ap.add_argument("--skip-label", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory() as wd:
        work = Path(wd)
        os.environ["SAMLABEL_CACHE_DIR"] = str(work / "onnx-cache")  # exports made here, not in the user's cache
        det = make_yolo_checkpoint(work / "w" / "det.pt", ["thing"])
        sam = make_sam_checkpoint(work / "w" / f"{args.sam}.pt")  # rigged: every box gets a mask
        plain = work / "plain" / f"{args.sam}.pt"
        plain.parent.mkdir()
        from ultralytics.models.sam import build as sam_build

        torch.manual_seed(0)
        torch.save(getattr(sam_build, f"build_{args.sam.replace('.', '_')}")().state_dict(), plain)
        data = work / "data"
        make_images(data, args.images, args.boxes)

        n = args.images
        rows = []  # (job, tool, seconds)
        common = dict(sam=sam, device=args.device, det=det, boxes=args.boxes, work=work)
        rows.append(("convert", "ultralytics yolo_bbox2segment", measure(run_yolo_bbox2segment, data, **common)))
        for r in runtimes:
            rows.append(("convert", f"samlabel convert --runtime {r}", measure(run_convert, data, runtime=r, **common)))
        if not args.skip_label:
            rows.append(("label", "ultralytics auto_annotate", measure(run_auto_annotate, data, **common)))
            for r in runtimes:
                rows.append(("label", f"samlabel label --runtime {r}", measure(run_label, data, runtime=r, **common)))
        enc = {r: encoder_seconds(sam, args.device, r) for r in runtimes}
        profile = per_image_profile(sam, data, args.device, runtimes[-1], args.boxes, work)
        agree = {r: agreement(plain, data, args.device, r) for r in runtimes}
        peak = cpu_peak_gflops() if args.device == "cpu" else None

    print(
        f"\nmachine: {cpu_name()}, {os.cpu_count()} CPUs, device {args.device}"
        + (f" (float32 matmul peak {peak:.0f} GFLOP/s)" if peak else "")
        + f"; {args.sam}; {n} images 640x480, {args.boxes} boxes each\n"
    )
    print("| job | tool | images/s | speed-up |\n|---|---|---:|---:|")
    base: dict[str, float] = {}
    for job, tool, seconds in rows:
        print(f"| {job} | {tool} | {n / seconds:.3f} | {base.setdefault(job, seconds) / seconds:.2f}x |")
    print(
        "\n| runtime | encoder s/image | % of CPU FLOP limit | max abs logit diff | max abs score diff | min mask IoU |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in runtimes:
        gflop = ENCODER_GFLOP.get(args.sam)
        frac = f"{100 * gflop / enc[r] / peak:.0f}%" if gflop and peak else "n/a"
        dl, ds, iou = agree[r]
        print(f"| {r} | {enc[r]:.3f} | {frac} | {dl:.2e} | {ds:.2e} | {iou:.4f} |")
    print(f"\nwhere the time goes (convert, --runtime {runtimes[-1]}, seconds per image):\n")
    print("| part | s/image |\n|---|---:|")
    for part, sec in profile.items():
        print(f"| {part} | {sec:.3f} |")


if __name__ == "__main__":
    main()
