"""``finetune()``: data -> cached embeddings -> baseline -> epochs (validated, best kept, resumable) -> checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.device import check_device
from pipeline.errors import SamlabelError
from pipeline.finetune import state as st
from pipeline.finetune.data import EmbeddingCache, TrainingData, default_cache_dir, load_training_data
from pipeline.finetune.loop import Trainer, make_features, steps_per_epoch, validate
from pipeline.finetune.model import TrainableSam
from pipeline.finetune.options import FinetuneOptions
from pipeline.sam.build import resolve_arch
from pipeline.sam.onnx_cache import file_sha256
from pipeline.sam.profiles import profile_of
from pipeline.threads import torch_threads
from pipeline.weights import resolve_weights

LOGGER = logging.getLogger(__name__)


def finetune(
    dataset: str | Path,
    out: str | Path,
    *,
    segmenter: str | Path = "mobile_sam.pt",
    arch: str | None = None,
    images: str | Path | None = None,
    names: list[str] | None = None,
    reviewed_only: bool = False,
    options: FinetuneOptions | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **option_values: Any,
) -> dict:
    """Fine-tune SAM's mask decoder (or decoder and prompt encoder) on a dataset's own masks.

    Trains on the dataset's ``train`` split, validates on its ``valid`` split (or ``val_fraction`` of
    train) after every epoch and before the first (the baseline), keeps the best checkpoint at
    ``out`` and stops when validation has not improved for ``patience`` epochs. Killed, the same
    call continues from the last finished epoch and ends with the same checkpoint.

    Args:
        dataset: anything ``samlabel convert`` reads that has masks: a samlabel output folder, a
            data.yaml / YOLO-seg dataset, a Roboflow export, or a COCO json (with ``images``).
        out: the checkpoint to write: the full model state dict, loadable as ``--segmenter out``
            (with ``--sam-arch`` unless its name ends like the released one, e.g. ``my_mobile_sam.pt``).
        segmenter: the SAM weights to start from (a path or a released name such as ``mobile_sam.pt``).
        arch: the architecture (``mobile_sam``, ``sam_b``, ``sam2.1_t`` ...); None takes it from the file name.
        images: image folder of a bare COCO json.
        names: class names of a bare images/ + labels/ pair.
        reviewed_only: train and validate only on the images checked in ``samlabel review`` (a samlabel dataset).
        options: a ``FinetuneOptions``; keyword ``option_values`` (``epochs=10``, ``lr=3e-4`` ...) override it.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default: the first GPU if any, else the CPU. On a GPU the
            forward passes run in mixed precision (bfloat16, or float16 with loss scaling).
        cache_dir: where image embeddings are kept (default ``platformdirs.user_cache_dir("samlabel")/embeddings``).
        overwrite: start over even if ``out`` holds another (or a finished) fine-tune.
        progress: show progress bars.

    Returns:
        What ``<out stem>.finetune.json`` holds: the curve (``epoch``, ``train_loss``, ``val_iou``,
        ``seconds`` per epoch; epoch 0 is the baseline), ``best``, ``baseline``, ``stopped``, the data
        and options used.

    Raises:
        SamlabelError: unreadable inputs, bad options, or ``out`` holding another fine-tune.
    """
    opts = FinetuneOptions.make(options, **option_values)
    out = Path(out)
    weights = resolve_weights(segmenter, flag="--segmenter")
    if out.exists() and out.resolve() == weights.resolve():
        raise SamlabelError(f"--out {out} is the --segmenter file itself; write the fine-tuned model elsewhere")
    if out.suffix != ".pt":
        raise SamlabelError(f"--out {out}: give a .pt file name (the fine-tuned checkpoint)")
    paths = st.Paths(out)
    check_device(device)
    profile = profile_of(resolve_arch(weights, arch))
    data = load_training_data(
        dataset, images=images, names=names, val_fraction=opts.val_fraction, reviewed_only=reviewed_only,
        profile=profile,
    )  # fmt: skip
    d = data.describe()
    left_out = ", ".join(f"{n} {what}" for what, n in d["skipped"].items() if n) or "nothing"
    LOGGER.info(
        "training on %d objects in %d images, validating on %d objects in %d images (%s); left out: %s",
        d["train"]["objects"], d["train"]["images"], d["valid"]["objects"], d["valid"]["images"], d["valid_from"],
        left_out,
    )  # fmt: skip
    sam = TrainableSam(weights, arch, device=device)
    parts = {
        "data": data.digest(),
        "weights": file_sha256(weights),
        "arch": sam.arch,
        "options": dataclasses.asdict(opts),
    }
    with st.locked(paths):
        saved = st.load_state(paths, parts, overwrite=overwrite)
        if saved is not None and saved.get("finished"):
            LOGGER.info("%s: this fine-tune already finished; nothing to do", out)
            return saved["result"]
        if saved is None:
            st.clear(paths)
        with torch_threads():
            return _run(
                data, paths, sam=sam, weights=weights, dataset=dataset, opts=opts, parts=parts,
                cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), saved=saved,
                progress=progress,
            )  # fmt: skip


def _run(data: TrainingData, paths: st.Paths, *, sam: TrainableSam, weights, dataset, opts, parts, cache_dir,
         saved, progress) -> dict:  # fmt: skip
    started = time.perf_counter()
    cache = EmbeddingCache(cache_dir, sam.features_key())
    features = make_features(sam, cache)
    _embed_all(data, features, progress=progress)
    params = sam.set_trainable(opts.train)
    total_steps = opts.epochs * steps_per_epoch(data.train, opts.batch)
    trainer = Trainer(sam, params, opts, features=features, total_steps=total_steps)
    rng = np.random.default_rng(opts.seed)
    result = {
        "output": str(paths.out),
        "segmenter": str(weights),
        "arch": sam.arch,
        "dataset": str(dataset),
        "data": data.describe(),
        "options": dataclasses.asdict(opts),
        "device": str(sam.device),
        "curve": [],
        "baseline": None,
        "best": None,
        "stopped": None,
        "finished": False,
    }
    if saved is not None:
        sam.load_trained_state(saved["trained"])
        trainer.load_state_dict(saved["trainer"])
        rng.bit_generator.state = saved["rng"]
        result = saved["result"]
        LOGGER.info("resuming %s after epoch %d of %d", paths.out, saved["epoch"], opts.epochs)
    else:
        t0 = time.perf_counter()
        val = validate(sam, data.valid, data.names, features=features)
        point = {"epoch": 0, "train_loss": None, "val_iou": val["iou"], "val": val,
                 "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
        result.update(curve=[point], baseline=point, best={"epoch": 0, "val_iou": val["iou"]})
        LOGGER.info("baseline (epoch 0): val mask IoU %.4f on %d objects", val["iou"], val["objects"])
        st.save_checkpoint(paths.out, sam.full_state())
        _save(paths, sam, trainer, rng, result, parts, epoch=0)
    epoch = result["curve"][-1]["epoch"]
    while epoch < opts.epochs and result["stopped"] is None:
        epoch += 1
        point = _epoch(
            sam, trainer, data, rng, features, epoch=epoch, opts=opts, progress=progress, best=result["best"]
        )
        result["curve"].append(point)
        if point["val_iou"] > result["best"]["val_iou"]:
            result["best"] = {"epoch": epoch, "val_iou": point["val_iou"]}
            st.save_checkpoint(paths.out, sam.full_state())
        elif opts.patience and epoch - result["best"]["epoch"] >= opts.patience:
            result["stopped"] = f"no better validation IoU for {opts.patience} epochs"
        _save(paths, sam, trainer, rng, result, parts, epoch=epoch)
    result["stopped"] = result["stopped"] or f"{opts.epochs} epochs done"
    result["finished"] = True
    result["cache"] = {"dir": str(cache.folder), "hits": cache.hits, "misses": cache.misses}
    result["seconds_this_run"] = round(time.perf_counter() - started, 3)
    _save(paths, sam, trainer, rng, result, parts, epoch=epoch)
    LOGGER.info(
        "best val mask IoU %.4f at epoch %d (baseline %.4f); %s; wrote %s",
        result["best"]["val_iou"], result["best"]["epoch"], result["baseline"]["val_iou"], result["stopped"], paths.out,
    )  # fmt: skip
    return result


def _embed_all(data: TrainingData, features, *, progress: bool) -> None:
    """Compute (or find cached) every image's embedding before training, so epochs only decode."""
    samples = [*data.train, *data.valid]
    for s in tqdm(samples, desc="embeddings", unit="img", disable=not progress, leave=False):
        features(s)


def _epoch(sam, trainer: Trainer, data: TrainingData, rng, features, *, epoch, opts, progress, best) -> dict:
    t0 = time.perf_counter()
    bar = tqdm(
        total=steps_per_epoch(data.train, opts.batch),
        desc=f"epoch {epoch}/{opts.epochs}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        # always steps/s (tqdm would switch to s/step below one step per second)
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]",
    )
    recent: list[float] = []

    def on_step(loss: float) -> None:
        recent.append(loss)  # one entry per optimizer step
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent[-20:]):.4f}", best_val_iou=f"{best['val_iou']:.4f}", refresh=False)

    try:
        train_loss = trainer.train_epoch(data.train, rng, on_step=on_step)
        train_seconds = time.perf_counter() - t0
        val = validate(sam, data.valid, data.names, features=features)
        bar.set_postfix(loss=f"{train_loss:.4f}", val_iou=f"{val['iou']:.4f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    LOGGER.info(
        "epoch %d/%d: train loss %.4f, val mask IoU %.4f, %.1f s (%.2f steps/s)",
        epoch, opts.epochs, train_loss, val["iou"], seconds, len(recent) / max(train_seconds, 1e-9),
    )  # fmt: skip
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_iou": val["iou"],
        "val": val,
        "seconds": round(seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "steps_per_s": round(len(recent) / max(train_seconds, 1e-9), 4),
        "lr": trainer.scheduler.get_last_lr()[0],
    }


def _save(paths: st.Paths, sam: TrainableSam, trainer: Trainer, rng, result: dict, parts: dict, *, epoch: int) -> None:
    """The curve, then the resume state (after the checkpoint, which the caller wrote first)."""
    st.save_curve(paths, result)
    st.save_state(
        paths,
        {
            "version": st.STATE_VERSION,
            "fingerprint": st.fingerprint(parts),
            "parts": parts,
            "epoch": epoch,
            "finished": result["finished"],
            "trained": sam.trained_state(),
            "trainer": trainer.state_dict(),
            "rng": rng.bit_generator.state,
            "result": result,
            "pid": os.getpid(),
        },
    )


def format_table(result: dict) -> str:
    """The before / after table for the terminal: validation mask IoU per class and overall."""
    before, best = result["baseline"], result["curve"][result["best"]["epoch"]]
    classes = list(before["val"]["per_class"])
    width = max([len("all"), len("class"), *(len(c) for c in classes)])
    lines = [
        f"validation: {result['data']['valid']['objects']} objects on {result['data']['valid']['images']} images "
        f"({result['data']['valid_from']}); mask IoU of each object's box-prompted mask, unmatched = 0",
        f"{'class':{width}}  {'before':>8}  {'after':>8}  {'change':>8}",
    ]
    for c in classes:
        b, a = before["val"]["per_class"][c], best["val"]["per_class"][c]
        lines.append(f"{c:{width}}  {b:8.4f}  {a:8.4f}  {a - b:+8.4f}")
    b, a = before["val_iou"], best["val_iou"]
    lines.append(f"{'all':{width}}  {b:8.4f}  {a:8.4f}  {a - b:+8.4f}")
    total = sum(p["seconds"] for p in result["curve"])
    lines += [
        "",
        f"best epoch {result['best']['epoch']} of {result['curve'][-1]['epoch']} ({result['stopped']}); "
        f"{total:.0f} s of training and validation; checkpoint {result['output']}",
    ]
    return "\n".join(lines)
