"""Everything mode: samlabel's automatic mask generator against Ultralytics' ``generate()``, side by side.

Both run the same random-weight MobileSAM checkpoint (built here; no downloads), the same point grid and the
same thresholds, on the same images (Ultralytics' bus.jpg / zidane.jpg and scikit-image samples). Per image:
seconds, decoder seconds per prompt, masks, and the reference's masks matched one-to-one by ours at mask
IoU >= 0.9. Then the covered-point skipping: the full grid's masks play the detector's instances
(``covered``) with one left out at a time (the object the detector missed); the grid points inside the others
are skipped; we report the speed-up over the full grid and the share of left-out masks found again.

Random weights give low predicted IoUs and unstable logits (|logit| < 3), so segment-anything's 0.88 / 0.95
thresholds (stability offset 1) pass nothing: ``--pred-iou-thresh``, ``--stability-thresh`` and
``--stability-offset`` set thresholds that pass masks; both sides get the same values.

    python bench/everything.py                                  # everything below, ~10+ min per image (reference)
    python bench/everything.py --images coffee --points 16 --skip-reference   # a quick look at samlabel alone
    python bench/everything.py --crops 0,1 --covered            # crops off and on; covered-point skipping

The reference runs at one PyTorch thread here (as Ultralytics runs on this CPU), samlabel with its defaults
(ONNX Runtime on CPU). Seconds are the minimum over ``--repeats``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pycocotools import mask as mask_utils  # noqa: E402

from pipeline.masks import full_rle  # noqa: E402

IMAGES = ("bus", "zidane", "coffee", "astronaut", "chelsea", "rocket")


def load_image(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB: an Ultralytics asset (bus, zidane) or a scikit-image sample."""
    if name in ("bus", "zidane"):
        import ultralytics
        from PIL import Image

        return np.asarray(Image.open(Path(ultralytics.__file__).parent / "assets" / f"{name}.jpg").convert("RGB"))
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)()[..., :3])


class Timed:
    """A segmenter whose ``predict`` calls are timed and counted (the decoder's share of a run)."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter
        self.seconds = 0.0
        self.prompts = 0

    def set_image(self, rgb):
        return self.segmenter.set_image(rgb)

    def predict(self, embedding, **kwargs):
        t = time.perf_counter()
        out = self.segmenter.predict(embedding, **kwargs)
        self.seconds += time.perf_counter() - t
        self.prompts += len(out)
        return out


def ours(segmenter, rgb: np.ndarray, options, covered=None):
    """(instances, seconds, decoder seconds, prompts); the image is encoded afresh (the cache is cleared)."""
    from pipeline.sam.automatic import MaskGenerator

    segmenter._last_embedding = None
    timed = Timed(segmenter)
    t = time.perf_counter()
    found = MaskGenerator(timed, options)(rgb, covered=covered)
    return found, time.perf_counter() - t, timed.seconds, timed.prompts


def reference(checkpoint: Path, rgb: np.ndarray, args, crop_layers: int):
    """Ultralytics' SAM ``generate()``: (bool masks (N, H, W), the same masks resized at 0.5, seconds, decoder
    seconds, prompts).

    Ultralytics thresholds the 1024 x 1024 logits, resizes the 0/1 masks to the image and keeps every pixel above
    the *logit* threshold 0: any pixel a mask pixel touches (a dilation by up to a pixel, and more on ragged
    outlines). The second set thresholds the resized 0/1 masks at 0.5 instead, to tell that difference apart.
    """
    import torch
    from ultralytics.models.sam.predict import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(args.reference_threads)
    try:
        overrides = dict(
            conf=0.0, iou=args.box_nms_thresh, imgsz=1024, model=str(checkpoint), save=False, verbose=False
        )
        predictor = Predictor(overrides=overrides)  # iou: the box NMS within a crop
        decoder = {"seconds": 0.0, "prompts": 0}
        inner = predictor._inference_features

        def timed_decoder(features, *a, **kw):
            t = time.perf_counter()
            out = inner(features, *a, **kw)
            decoder["seconds"] += time.perf_counter() - t
            decoder["prompts"] += out[0].shape[0] // 3
            return out

        predictor._inference_features = timed_decoder
        half = {}  # the masks resized as 0/1 and thresholded at 0.5, not at the logit threshold 0 (see match_half)
        postprocess = predictor.postprocess

        def both_postprocesses(preds, img, orig_imgs):
            model = predictor.model
            threshold = model.mask_threshold
            model.mask_threshold = 0.5
            try:
                half["results"] = postprocess(preds, img, orig_imgs)
            finally:
                model.mask_threshold = threshold
            predictor.segment_all = True  # postprocess resets it
            return postprocess(preds, img, orig_imgs)

        predictor.postprocess = both_postprocesses
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            results = list(
                predictor(
                    source=bgr,
                    stream=True,
                    points_stride=args.points,
                    crop_n_layers=crop_layers,
                    conf_thres=args.pred_iou_thresh,
                    stability_score_thresh=args.stability_thresh,
                    stability_score_offset=args.stability_offset,
                    crop_nms_thresh=0.7,
                )
            )
        seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    out = []
    for result in (results[0], half["results"][0]):
        masks = result.masks
        out.append(np.zeros((0, *rgb.shape[:2]), bool) if masks is None else masks.data.cpu().numpy().astype(bool))
    return out[0], out[1], seconds, decoder["seconds"], decoder["prompts"]


def _rle(bits: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(bits.astype(np.uint8)))


def match(ref_rles: list, our_rles: list, iou: float = 0.9) -> int:
    """Masks of the reference matched one-to-one by ours at mask IoU >= ``iou`` (greedy, best IoU first)."""
    if not ref_rles or not our_rles:
        return 0
    ious = np.asarray(mask_utils.iou(our_rles, ref_rles, [0] * len(ref_rles)))  # (ours, ref)
    pairs = sorted(zip(*np.nonzero(ious >= iou), strict=True), key=lambda p: -ious[p])
    used_ours, used_ref = set(), set()
    for o, r in pairs:
        if o not in used_ours and r not in used_ref:
            used_ours.add(o)
            used_ref.add(r)
    return len(used_ref)


def covered_bench(segmenter, rgb, options, full, full_seconds, *, samples: int = 5) -> tuple[float, float, int]:
    """The full grid's masks as the detector's instances, one left out at a time (the object the detector missed):
    (mean speed-up over the full grid, share of the left-out masks found again at IoU >= 0.9, runs)."""
    hw = rgb.shape[:2]
    order = np.argsort([-m.area for m in full.masks], kind="stable")
    picks = order[np.linspace(0, len(order) - 1, min(samples, len(order))).astype(int)]  # large to small
    speedups, found = [], 0
    for i in picks:
        others = full[[j for j in range(len(full)) if j != i]]
        got, seconds, _, _ = ours(segmenter, rgb, options, covered=others)
        speedups.append(full_seconds / seconds)
        found += match([full_rle(full.masks[int(i)], hw)], [full_rle(m, hw) for m in got.masks])
    return float(np.mean(speedups)), found / len(picks), len(picks)


def peak_memory(args) -> list[str]:
    """Peak RSS of one 1920 x 1080 image at 32 and 64 points per side, each in a fresh process: after loading and
    one tiny warm-up image (model, ONNX sessions), and after the generator's run."""
    import subprocess

    lines = []
    for n in (32, 64):
        cmd = [sys.executable, __file__, "--memory-run", str(n), "--runtime", args.runtime]
        cmd += ["--pred-iou-thresh", str(args.pred_iou_thresh), "--stability-thresh", str(args.stability_thresh)]
        cmd += ["--stability-offset", str(args.stability_offset), "--box-nms-thresh", str(args.box_nms_thresh)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        lines.append(out)
    return lines


def _memory_run(args, segmenter, base) -> None:
    import resource

    rgb = np.ascontiguousarray(np.resize(load_image("bus"), (1080, 1920, 3)))
    ours(segmenter, rgb[:64, :64].copy(), base.replace(points_per_side=2))  # warm up: sessions, prompt decoder
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    found, seconds, _, prompts = ours(segmenter, rgb, base.replace(points_per_side=args.memory_run))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"1920x1080, {args.memory_run} points per side ({prompts} prompts): peak RSS {after:.0f} MiB "
        f"({before:.0f} MiB after loading and a warm-up), {len(found)} masks, {seconds:.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=",".join(IMAGES), help=f"comma-separated, of {IMAGES}")
    ap.add_argument("--points", type=int, default=32, help="points per side")
    ap.add_argument("--crops", default="0", help="comma-separated crop layer counts to run, e.g. 0,1")
    ap.add_argument("--pred-iou-thresh", type=float, default=0.0, help="0.88 for trained weights")
    ap.add_argument("--stability-thresh", type=float, default=0.6, help="0.95 for trained weights")
    ap.add_argument("--stability-offset", type=float, default=0.1, help="1.0 for trained weights")
    ap.add_argument("--box-nms-thresh", type=float, default=0.7, help="1.0: no NMS (compare every candidate kept)")
    ap.add_argument("--runtime", default="auto", help="samlabel's SAM runtime")
    ap.add_argument("--reference-threads", type=int, default=1, help="PyTorch threads of the reference")
    ap.add_argument("--skip-reference", action="store_true", help="samlabel alone")
    ap.add_argument("--covered", action="store_true", help="also measure covered-point skipping")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at 32 and 64 points (1080p)")
    ap.add_argument("--memory-run", type=int, default=0, help=argparse.SUPPRESS)  # one measurement (a subprocess)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from bench._models import ROOT as _  # noqa: F401  (sys.path)
    from pipeline.config import GeneratorOptions
    from pipeline.sam import Segmenter
    from tests.checkpoints import make_plain_sam_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_plain_sam_checkpoint(Path(tmp) / "mobile_sam.pt")
        segmenter = Segmenter(checkpoint, device="cpu", runtime=args.runtime, cache_dir=Path(tmp) / "cache")
        base = GeneratorOptions(
            points_per_side=args.points,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_thresh=args.stability_thresh,
            stability_offset=args.stability_offset,
            box_nms_thresh=args.box_nms_thresh,
        )
        if args.memory_run:
            _memory_run(args, segmenter, base)
            return
        ours(segmenter, load_image("coffee"), base.replace(points_per_side=2))  # exports and checks the ONNX graphs
        print(
            f"MobileSAM (random weights), {args.points}x{args.points} points, pred_iou > {args.pred_iou_thresh}, "
            f"stability >= {args.stability_thresh} (offset {args.stability_offset}), box NMS {args.box_nms_thresh}; "
            f"samlabel runtime {segmenter.runtime}"
        )
        header = (
            "image        crops | ref s/img  ref dec s/prompt  ref masks | ours s/img  dec s/prompt  bound s  "
            "ours/bound  masks | matched (IoU >= 0.9)  speed-up"
        )
        print(header)
        for name in args.images.split(","):
            rgb = load_image(name)
            hw = rgb.shape[:2]
            for crops in (int(c) for c in args.crops.split(",")):
                options = base.replace(crop_layers=crops)
                found, seconds, dec, prompts = ours(segmenter, rgb, options)
                per_prompt = dec / max(prompts, 1)
                bound = prompts * per_prompt
                row = f"{name:12s} {crops:5d} | "
                if args.skip_reference:
                    row += f"{'-':>9s}  {'-':>16s}  {'-':>9s} | "
                else:
                    ref, ref_half, ref_s, ref_dec, ref_prompts = reference(checkpoint, rgb, args, crops)
                    our_rles = [full_rle(m, hw) for m in found.masks]
                    matched = match([_rle(m) for m in ref], our_rles)
                    matched_half = match([_rle(m) for m in ref_half], our_rles)
                    row += f"{ref_s:9.1f}  {ref_dec / max(ref_prompts, 1):16.4f}  {len(ref):9d} | "
                row += f"{seconds:10.1f}  {per_prompt:12.4f}  {bound:7.1f}  {seconds / bound:10.2f}  {len(found):5d} | "
                if not args.skip_reference:
                    share = matched / len(ref) if len(ref) else float("nan")
                    row += f"{matched}/{len(ref)} ({share:.0%}; at 0.5: {matched_half})  {ref_s / seconds:6.1f}x"
                print(row, flush=True)
                if args.covered and crops == 0 and len(found):
                    speedup, share, runs = covered_bench(segmenter, rgb, options, found, seconds)
                    print(f"  covered-point skipping (all masks but one as the detector's, {runs} runs): "
                          f"{speedup:.2f}x faster than the full grid, {share:.0%} of the left-out masks found")  # fmt: skip
        if args.memory:
            for line in peak_memory(args):
                print(line)


if __name__ == "__main__":
    main()
