"""Everything mode: samlabel's automatic mask generator against Ultralytics' generate(); --propose's cost.

Then what covered-point skipping saves for ``--propose``, and what ``--propose`` adds to a label run.

Both run the same random-weight MobileSAM checkpoint (built here; no downloads), the same point grid and the
same thresholds, on the same images (Ultralytics' bus.jpg / zidane.jpg and scikit-image samples). Per image:
seconds, decoder seconds per prompt, masks, and the reference's masks matched one-to-one by ours at mask
IoU >= 0.9.

Random weights give low predicted IoUs and unstable logits (|logit| < 3), so segment-anything's 0.88 / 0.95
thresholds (stability offset 1) pass nothing: ``--pred-iou-thresh``, ``--stability-thresh`` and
``--stability-offset`` set thresholds that pass masks; both sides get the same values.

``--covered``: covered-point skipping (``MaskGenerator(rgb, covered=...)``, what ``--propose`` runs) measured on
scenes of known objects, since random-weight MobileSAM answers every point with one near-whole-image mask. Each
bench photo gets ``--covered-objects`` ellipses drawn over it (some with a part inside), its background cut into
regions (Felzenszwalb), and an oracle SAM (``bench/_oracle.py``) answers a point with the part / object / region
under it, with segment-anything's own thresholds (0.88, 0.95, offset 1). The detector's instances are the drawn
objects, their masks dilated by ``--bleed`` pixels (a box-prompted SAM mask is seldom exact); each object is left
out once (the object the detector missed). Per image: prompts of the full grid and of the skipped grid, the full
grid's proposals (``select_proposals`` against the detector's other objects) and the share of them the skipped
grid still finds (IoU >= 0.9), and whether the left-out object is among the proposals (IoU >= 0.8 with its true
mask), full grid / skipped.

- measured: prompt counts; the generator's own seconds (thresholds, stability, NMS, upsampling: the real code, on
  the oracle's masks) and ``select_proposals``'; MobileSAM's decoder seconds per prompt (the median of the table
  above, real ONNX path, this run);
- modelled: the masks (the oracle's, not a trained SAM's), hence the seconds: prompts x decoder seconds per
  prompt + the generator's own measured seconds. ``--propose`` shares the box prompts' encoder pass, so no
  encoder time enters either side.

``--propose-cost``: ``pipeline.label`` (what ``samlabel label`` runs) on ``--propose-images`` with a random-weight
YOLOv8n (``--max-det`` boxes) and this MobileSAM at ``--propose-points`` per side: without ``--propose``, with it
(covered points skipped, as a user runs it) and with the full grid; report.json's stage seconds per image (all
real; which grid points the random-weight masks cover is arbitrary, hence the full-grid row). The decoder's
seconds per prompt do not depend on the image, so the propose stage grows with the prompts decoded: 32 x 32
points cost about 4x the 16 x 16 row.

    python bench/everything.py                                  # everything below, ~10+ min per image (reference)
    python bench/everything.py --images coffee --points 16 --skip-reference   # a quick look at samlabel alone
    python bench/everything.py --crops 0,1 --covered            # crops off and on; covered-point skipping
    python bench/everything.py --skip-reference --points 16 --covered --propose-cost   # the --propose numbers

The reference runs at one PyTorch thread here (as Ultralytics runs on this CPU), samlabel with its defaults
(ONNX Runtime on CPU). Each is measured once.
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


def covered_bench(names: list[str], options, seconds_per_prompt: float, args) -> None:
    """Covered-point skipping on scenes of known objects (``bench/_oracle.py``), the detector's objects left out
    one at a time: prints per image the prompts saved, the share of the full grid's proposals still found, whether
    the left-out object is found, and the ``--propose`` stage's modelled seconds (full grid vs skipped).

    Measured: prompt counts, the generator's and ``select_proposals``' own seconds (post-processing, NMS, run on
    the oracle's masks), the decoder's seconds per prompt (``seconds_per_prompt``: real MobileSAM, this run).
    Modelled: the masks (the oracle's), hence seconds = prompts x ``seconds_per_prompt`` + measured own seconds.
    """
    from bench._oracle import OracleSam, make_scene
    from pipeline.config import GeneratorOptions
    from pipeline.proposals import select_proposals
    from pipeline.sam.automatic import MaskGenerator

    side = args.covered_points or options.points_per_side
    options = GeneratorOptions(points_per_side=side, box_nms_thresh=options.box_nms_thresh)  # SAM's thresholds
    print(
        f"\ncovered-point skipping: oracle SAM on scenes of {args.covered_objects} known objects (radius "
        f"{args.object_radius[0]:.0%}-{args.object_radius[1]:.0%} of the short side) drawn over each photo "
        f"(bench/_oracle.py), {options.points_per_side}x{options.points_per_side} points, pred_iou > "
        f"{options.pred_iou_thresh}, stability >= {options.stability_thresh}; the detector's masks are its objects "
        f"dilated by {args.bleed} px, one object left out per run; seconds modelled as prompts x "
        f"{seconds_per_prompt * 1000:.1f} ms (MobileSAM's decoder, measured above) + the generator's own measured time"
    )
    print(
        "image      objects regions | full: prompts proposals   s/img | skipped: prompts (saved)   s/img | "
        "speed-up prompts  seconds | full proposals found  left-out object found (full / skipped)"
    )
    keys = ("full_s", "skip_s", "skip_prompts", "props", "found", "left_full", "left_skip")
    totals = dict.fromkeys(("runs", "full_prompts", *keys), 0.0)
    for name in names:
        scene = make_scene(load_image(name), name, objects=args.covered_objects, radius=args.object_radius)
        hw = scene.rgb.shape[:2]
        sam = OracleSam(scene)
        MaskGenerator(sam, options.replace(points_per_side=4))(scene.rgb)  # warm-up: first calls, oracle's maps
        generate = MaskGenerator(sam, options)
        full, full_own, full_prompts = _oracle_run(generate, sam, scene.rgb, None)
        row = dict.fromkeys(keys, 0.0)
        for label in scene.objects:
            covered = scene.detections(leave_out=label, bleed=args.bleed)
            t = time.perf_counter()
            full_props = select_proposals(full, covered, iou=args.propose_iou)
            full_own_k = full_own + time.perf_counter() - t
            got, own, prompts = _oracle_run(generate, sam, scene.rgb, covered)
            t = time.perf_counter()
            props = select_proposals(got, covered, iou=args.propose_iou)
            own += time.perf_counter() - t
            full_rles, rles = [full_rle(m, hw) for m in full_props.masks], [full_rle(m, hw) for m in props.masks]
            truth = [_rle(scene.whole(label))]
            row["full_s"] += full_prompts * seconds_per_prompt + full_own_k
            row["skip_s"] += prompts * seconds_per_prompt + own
            row["skip_prompts"] += prompts
            row["props"] += len(full_props)
            row["found"] += match(full_rles, rles)
            row["left_full"] += match(truth, full_rles, iou=0.8)
            row["left_skip"] += match(truth, rles, iou=0.8)
        runs = len(scene.objects)
        for key, value in row.items():
            totals[key] += value
        totals["runs"] += runs
        totals["full_prompts"] += full_prompts * runs
        _covered_row(name, scene, runs, full_prompts, row)
    if len(names) > 1:
        runs = int(totals["runs"])
        _covered_row("all", None, runs, totals["full_prompts"] / max(runs, 1), {k: totals[k] for k in keys})


def _oracle_run(generate, sam, rgb, covered):
    """(instances, the generator's own seconds (all but the oracle's answers), prompts decoded)."""
    before_s, before_n = sam.seconds, sam.prompts
    t = time.perf_counter()
    found = generate(rgb, covered=covered)
    return found, time.perf_counter() - t - (sam.seconds - before_s), sam.prompts - before_n


def _covered_row(name: str, scene, runs: int, full_prompts: float, row: dict) -> None:
    n = max(runs, 1)
    skip = row["skip_prompts"] / n
    objects = f"{runs:7d}" if scene is None else f"{len(scene.objects):7d}"
    regions = f"{'':>7s}" if scene is None else f"{scene.background:7d}"
    found = row["found"] / row["props"] if row["props"] else float("nan")
    print(
        f"{name:10s} {objects} {regions} | {full_prompts:13.0f} {row['props'] / n:9.1f} {row['full_s'] / n:7.1f} | "
        f"{skip:16.0f} ({1 - skip / full_prompts:4.0%}) {row['skip_s'] / n:7.1f} | "
        f"{full_prompts / skip:15.2f}x {row['full_s'] / row['skip_s']:7.2f}x | "
        f"{found:20.1%}  {int(row['left_full'])}/{runs} / {int(row['left_skip'])}/{runs}",
        flush=True,
    )


class _Counted:
    """A generator stage that adds up its generator's ``stats`` (prompts decoded, points skipped) over a run."""

    def __init__(self, generate) -> None:
        self.generate = generate
        self.prompts = self.skipped = 0

    def __call__(self, rgb, covered=None):
        out = self.generate(rgb, covered=covered)
        self.prompts += self.generate.stats["prompts"]
        self.skipped += self.generate.stats["skipped"]
        return out


def propose_cost(segmenter, tmp: Path, args) -> None:
    """What ``--propose`` adds to a label run: ``samlabel label`` (the API) on ``--propose-images`` with a
    random-weight YOLOv8n (``--max-det`` boxes) and the bench's MobileSAM, without ``--propose``, with it (as a user
    runs it: covered points skipped) and with the full grid; report.json's stage seconds per image."""
    import json

    from PIL import Image

    from bench._models import make_yolo_checkpoint
    from pipeline import label
    from pipeline.config import generator_options, load_settings
    from pipeline.run.stages import GeneratorRecipe
    from pipeline.sam.automatic import MaskGenerator

    logging.getLogger("pipeline.run.report").setLevel(logging.ERROR)  # "no val images": one split is enough here
    names = args.propose_images.split(",")
    src = tmp / "propose_src"
    src.mkdir()
    for name in names:
        Image.fromarray(load_image(name)).save(src / f"{name}.png")
    detector = make_yolo_checkpoint(tmp / "yolov8n.pt", ["a", "b", "c"])
    n = args.propose_points
    settings = dict(
        detector=str(detector),
        split="train=1",
        max_det=args.max_det,
        runtime=args.runtime,
        device="cpu",
        points_per_side=n,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_thresh=args.stability_thresh,
    )
    cfg = load_settings(propose=True, **settings)
    print(
        f"\n--propose's cost: samlabel label on {','.join(names)} (random-weight YOLOv8n, max_det {args.max_det}; "
        f"the MobileSAM above), {n}x{n} points, seconds per image from report.json (this_run stage_seconds)"
    )
    print(
        "run                        | total s/img  detect  segment  propose | prompts/img (of the grid)  proposals/img"
    )
    full_grid = generator_options(cfg).replace(skip_covered=False)
    variants = (
        ("label", None),
        ("label --propose", _Counted(GeneratorRecipe(cfg).build(segmenter))),
        ("  full grid (no skipping)", _Counted(MaskGenerator(segmenter, full_grid))),
    )
    for i, (title, generator) in enumerate(variants):
        segmenter._last_embedding = None
        out = tmp / f"propose_{i}"
        label(
            src,
            out,
            segmenter=segmenter,
            generator=generator,
            propose=generator is not None,
            progress=False,
            **settings,
        )
        report = json.loads((out / "report.json").read_text())
        run = report["timings"]["this_run"]
        images, stages = max(run["images"], 1), run["stage_seconds"]
        row = f"{title:26s} | {run['seconds'] / images:11.1f}"
        row += "".join(
            f"  {stages.get(k, 0.0) / images:{w}.1f}" for k, w in (("detect", 6), ("segment", 7), ("propose", 7))
        )
        if generator is not None:
            row += f" | {generator.prompts / images:11.0f} of {n * n} ({generator.skipped / images:.0f} skipped)"
            row += f"  {report['proposals']['total'] / images:13.1f}"
        print(row, flush=True)


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
    ours(segmenter, rgb[:64, :64].copy(), base.replace(points_per_side=2))  # warm up: sessions, point decoder
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
    ap.add_argument("--covered", action="store_true", help="also measure covered-point skipping (oracle scenes)")
    ap.add_argument("--covered-points", type=int, default=0, help="--covered: points per side (0: --points)")
    ap.add_argument("--covered-objects", type=int, default=6, help="objects drawn per scene for --covered")
    ap.add_argument(
        "--object-radius",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        default=(0.03, 0.2),
        help="--covered: min,max radius of the drawn objects, as shares of the image's short side",
    )
    ap.add_argument("--bleed", type=int, default=3, help="--covered: pixels the detector's masks overrun its objects")
    ap.add_argument("--propose-iou", type=float, default=0.5, help="--covered: samlabel's --propose-iou")
    ap.add_argument("--propose-cost", action="store_true", help="also time label runs with and without --propose")
    ap.add_argument("--propose-images", default="bus,zidane", help="--propose-cost: comma-separated images")
    ap.add_argument("--propose-points", type=int, default=16, help="--propose-cost: points per side")
    ap.add_argument("--max-det", type=int, default=10, help="--propose-cost: the random detector's boxes per image")
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
        per_prompts = []
        for name in args.images.split(","):
            rgb = load_image(name)
            hw = rgb.shape[:2]
            for crops in (int(c) for c in args.crops.split(",")):
                options = base.replace(crop_layers=crops)
                found, seconds, dec, prompts = ours(segmenter, rgb, options)
                per_prompt = dec / max(prompts, 1)
                per_prompts.append(per_prompt)
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
        if args.covered:
            covered_bench(args.images.split(","), base, float(np.median(per_prompts)), args)
        if args.propose_cost:
            propose_cost(segmenter, Path(tmp), args)
        if args.memory:
            for line in peak_memory(args):
                print(line)


if __name__ == "__main__":
    main()
