"""Fine-tuning on this machine: held-out mask IoU of a random-weight MobileSAM taught synthetic shapes, and speed.

    python bench/finetune.py                    # both parts: the default fine-tune, then speed of mobile_sam and sam_b
    python bench/finetune.py --part quality     # only the fine-tune with default settings (the curve, the time)
    python bench/finetune.py --part speed --archs mobile_sam,sam_b,sam2.1_t

quality: ``samlabel finetune`` with its default settings on a synthetic COCO dataset (bright discs,
rectangles and ellipses on a dark background; train and valid splits), starting from a random-weight
MobileSAM (real architecture, tests/checkpoints.py), then ``samlabel convert --resegment`` of
held-out images (never used for training or validation) with the base and the fine-tuned file and
``samlabel evaluate`` of both against the truth: mask IoU per object (unmatched = 0, matching at
IoU > 0) before and after.

speed: per architecture (random weights), seconds per image of the image encoder (the cached part)
and, for one epoch of the default settings, optimizer steps/s, objects/s and seconds per epoch,
plus validation seconds per object; from these, the time of one epoch over 500 masks and of a whole
default fine-tune on them (500 training masks on 250 images, 125 validation masks on 63 images, every
image encoded once, all default epochs run: early stopping can only make it shorter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.finetune import FinetuneOptions, finetune, format_table  # noqa: E402
from tests.checkpoints import make_plain_sam_checkpoint  # noqa: E402
from tests.shapes import write_coco_dataset, write_coco_split  # noqa: E402


def heldout_iou(weights: Path, heldout: Path, work: Path, *, arch: str) -> dict:
    """``convert --resegment`` of the held-out images with ``weights``, then ``evaluate`` against their truth."""
    import pipeline
    from pipeline.evaluate import evaluate

    out = work / f"pred_{weights.stem}"
    shutil.rmtree(out, ignore_errors=True)
    coco = heldout / "_annotations.coco.json"
    pipeline.convert(
        coco,
        out,
        images=heldout,
        segmenter=str(weights),
        resegment=True,
        runtime="torch",
        progress=False,
        coco_masks="rle",
    )
    r = evaluate(out, coco, gt_images=heldout, match_iou=0.0)
    per_object = r["mask_iou"]["mean"] * r["matched"] / r["instances"]["gt"] if r["matched"] else 0.0
    return {
        "per_object_iou": per_object,
        "matched_mean_iou": r["mask_iou"]["mean"],
        "gt": r["instances"]["gt"],
        "matched": r["matched"],
        "segm_AP": r["segm"]["AP"],
    }


def quality(work: Path, args) -> None:
    objects = tuple(int(v) for v in args.objects.split("-"))
    ds = write_coco_dataset(
        work / "shapes", {"train": args.train_images, "valid": args.valid_images}, seed=0, objects=objects
    )
    heldout = work / "heldout"
    write_coco_split(heldout, args.heldout_images, np.random.default_rng(123), prefix="held_", objects=objects)
    base = make_plain_sam_checkpoint(work / "base" / "mobile_sam.pt")
    out = work / "models" / "shapes_mobile_sam.pt"
    opts = FinetuneOptions.make(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)})
    print(
        f"dataset: {args.train_images} train + {args.valid_images} valid images, {args.heldout_images} held-out; {opts}",
        flush=True,
    )
    t0 = time.perf_counter()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)}
    result = finetune(ds, out, segmenter=base, cache_dir=work / "cache", progress=not args.quiet, **overrides)
    seconds = time.perf_counter() - t0
    print(format_table(result))
    print(f"\nfine-tune wall time {seconds:.0f} s (embeddings included)")
    print(f"{'epoch':>5}  {'train loss':>10}  {'val IoU':>8}  {'seconds':>8}  {'steps/s':>8}")
    for p in result["curve"]:
        loss = "-" if p["train_loss"] is None else f"{p['train_loss']:.4f}"
        print(f"{p['epoch']:>5}  {loss:>10}  {p['val_iou']:8.4f}  {p['seconds']:8.1f}  {p.get('steps_per_s', 0):8.3f}")
    before = heldout_iou(base, heldout, work, arch="mobile_sam")
    after = heldout_iou(out, heldout, work, arch="mobile_sam")
    print(f"\nheld-out ({args.heldout_images} images, samlabel convert --resegment + samlabel evaluate):")
    for name, r in (("before", before), ("after", after)):
        print(
            f"  {name:6}  mask IoU per object {r['per_object_iou']:.4f}  (matched {r['matched']}/{r['gt']}, "
            f"matched mean {r['matched_mean_iou'] or 0:.4f}, segm AP {r['segm_AP'] or 0:.4f})"
        )
    (work / "quality.json").write_text(
        json.dumps({"result": result, "heldout": {"before": before, "after": after}, "seconds": seconds}, indent=2)
    )


def speed(work: Path, args) -> None:
    from pipeline.finetune.data import EmbeddingCache, load_training_data
    from pipeline.finetune.loop import Trainer, make_features, steps_per_epoch, validate
    from pipeline.finetune.model import TrainableSam
    from pipeline.images import load_image
    from pipeline.threads import torch_threads

    ds = write_coco_dataset(work / "speed", {"train": args.speed_images, "valid": 2}, seed=1)
    data = load_training_data(ds)
    opts = FinetuneOptions()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    objects = sum(len(s.instances) for s in data.train)
    print(
        f"\nspeed on {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads): "
        f"{len(data.train)} images, {objects} objects, batch {opts.batch}, {opts.clicks} click rounds",
        flush=True,
    )
    print(
        f"{'arch':12} {'encoder s/img':>13} {'steps/s':>8} {'objects/s':>9} {'s/epoch':>8} {'val s/obj':>9} "
        f"{'500 masks: 1 epoch':>18} {'whole fine-tune':>15}"
    )
    for arch in args.archs.split(","):
        weights = make_plain_sam_checkpoint(work / "w" / f"{arch}.pt")
        sam = TrainableSam(weights, device=device)
        cache = EmbeddingCache(work / f"cache_{arch}", sam.features_key())
        features = make_features(sam, cache)
        with torch_threads():
            sam.encode(load_image(data.train[0].path).rgb)  # warm-up
            t0 = time.perf_counter()
            for s in [*data.train, *data.valid]:
                features(s)
            enc = (time.perf_counter() - t0) / (len(data.train) + len(data.valid))
            params = sam.set_trainable(opts.train)
            trainer = Trainer(sam, params, opts, features=features, total_steps=100)
            t0 = time.perf_counter()
            trainer.train_epoch(data.train, np.random.default_rng(0))
            epoch = time.perf_counter() - t0
            t0 = time.perf_counter()
            v = validate(sam, data.valid, data.names, features=features)
            val = (time.perf_counter() - t0) / v["objects"]
        steps = steps_per_epoch(data.train, opts.batch)
        per_obj = epoch / objects
        # 500 training masks on 250 images, a valid split of 125 masks on 63 images, every epoch of the defaults
        whole = 313 * enc + opts.epochs * (500 * per_obj + 125 * val)
        print(
            f"{arch:12} {enc:13.3f} {steps / epoch:8.3f} {objects / epoch:9.3f} {epoch:8.1f} {val:9.3f} "
            f"{500 * per_obj / 60:14.1f} min {whole / 60:11.0f} min",
            flush=True,
        )
        del sam, trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("quality", "speed", "both"), default="both")
    p.add_argument("--train-images", type=int, default=48, help="training images (1-3 shapes each)")
    p.add_argument("--valid-images", type=int, default=12, help="validation images")
    p.add_argument("--heldout-images", type=int, default=16, help="held-out images for the final evaluate")
    p.add_argument("--objects", default="1-3", help="shapes per image, MIN-MAX")
    p.add_argument("--archs", default="mobile_sam,sam_b")
    p.add_argument("--speed-images", type=int, default=12, help="training images of the speed part")
    p.add_argument("--device", default=None)
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    p.add_argument("-q", "--quiet", action="store_true")
    for f in dataclasses.fields(FinetuneOptions):  # default: the product's defaults
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="samlabel-bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.part in ("quality", "both"):
            quality(work, args)
        if args.part in ("speed", "both"):
            speed(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
