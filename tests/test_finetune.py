"""``samlabel finetune``: data and targets, the embedding cache, a real fine-tune of a random-weight MobileSAM
(held-out mask IoU measured with ``evaluate``, the file used by the SAM stage), and resume after a kill.

The datasets are synthetic shapes (tests/shapes.py); the model is MobileSAM's real architecture with
random weights (tests/checkpoints.py), whose masks start bad. Embeddings are cached once for the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.errors import SamlabelError
from pipeline.finetune import finetune
from pipeline.finetune.data import EmbeddingCache, load_training_data, lowres_target
from pipeline.finetune.loop import make_features, predict
from pipeline.finetune.model import TrainableSam, content_cells
from pipeline.finetune.state import Paths
from pipeline.sources import assign_split
from pipeline.threads import default_threads
from pipeline.types import CropMask
from tests.checkpoints import make_plain_sam_checkpoint
from tests.helpers import offline
from tests.shapes import write_coco_dataset, write_coco_split, write_yolo_dataset

ROOT = Path(__file__).resolve().parents[1]

# A short fine-tune: 100 one-object steps, box prompts only (the random decoder first predicts nothing, then
# outlines the shapes: validation IoU 0.19 -> 0.47 here); the defaults train longer, with corrective clicks
# (bench/finetune.py).
TRAIN = dict(epochs=10, lr=3e-4, batch=1, clicks=0, patience=0)
SHAPES = dict(objects=(1, 1), radius=(0.2, 0.4))  # one large shape per image
# The SAM stage as a user runs it on a fine-tuned file whose name does not say the architecture.
STAGE = dict(runtime="torch", sam_arch="mobile_sam")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("finetune")
    ds = write_coco_dataset(root / "ds", {"train": 10, "valid": 4}, seed=0, **SHAPES)
    heldout = root / "heldout"
    write_coco_split(heldout, 4, np.random.default_rng(99), prefix="held_", **SHAPES)
    base = make_plain_sam_checkpoint(root / "base" / "mobile_sam.pt")
    return SimpleNamespace(root=root, ds=ds, heldout=heldout, base=base, cache=root / "cache")


# ---------------------------------------------------------------------------------------------- data


def test_features_and_validation_masks_are_the_sam_stages(shapes):
    """What training encodes and what validation predicts are the SAM stage's embedding and masks."""
    from pipeline.images import load_image
    from pipeline.sam import Segmenter

    data = load_training_data(shapes.ds)
    sample = data.valid[0]
    rgb = load_image(sample.path).rgb
    sam = TrainableSam(shapes.base, device="cpu")
    stage = Segmenter(str(shapes.base), runtime="torch")
    embedding = stage.set_image(rgb)
    ours = sam.encode(rgb)
    assert torch.equal(ours["image_embed"], embedding.features)
    pred = predict(sam, ours, sample, chunk=4)
    expected = stage.predict(embedding, boxes=sample.instances.xyxy)
    assert len(pred) == len(sample.instances) > 0
    for k, mask in enumerate(pred.masks):
        assert mask == expected.mask(k)
    np.testing.assert_allclose(pred.mask_score, expected.scores[:, 0], atol=1e-6)


@pytest.mark.parametrize(
    "hw, pixels_per_cell",
    [
        ((256, 256), 1),  # 4x letterbox: one image pixel per low-res cell, coverage is the mask itself
        ((512, 512), 2),  # 2x2 image pixels per cell
        ((96, 128), 0.5),  # 8x: one pixel covers 2x2 cells
    ],
)
def test_lowres_target_is_the_masks_area_coverage(hw, pixels_per_cell):
    mask = np.zeros(hw, dtype=bool)
    mask[10:30, 20:26] = True
    mask[40, 50] = True
    target = lowres_target(CropMask.from_full(mask), hw).dense(content_cells(hw))
    assert target.shape == content_cells(hw)
    # area is preserved: each cell is 1 / pixels_per_cell^2 of ... pixels, exactly
    assert target.sum() == pytest.approx(mask.sum() / pixels_per_cell**2, abs=1e-3)
    if pixels_per_cell == 1:
        np.testing.assert_array_equal(target[: hw[0], : hw[1]], mask.astype(np.float32))
    if pixels_per_cell == 2:
        assert target[5, 10] == 1.0 and target[20, 25] == pytest.approx(0.25, abs=1 / 255)  # a lone pixel: 1/4


def test_training_data_without_a_valid_split_validates_on_a_hashed_share_of_train(tmp_path):
    ds = write_yolo_dataset(tmp_path / "yolo", {"train": 12}, seed=3)
    data = load_training_data(ds, val_fraction=0.25)
    fractions = {"train": 0.75, "valid": 0.25}
    assert data.valid and data.train
    assert all(assign_split(s.rel, fractions) == "valid" for s in data.valid)
    assert all(assign_split(s.rel, fractions) == "train" for s in data.train)
    assert len(data.train) + len(data.valid) == 12
    assert data.digest() == load_training_data(ds, val_fraction=0.25).digest()  # deterministic
    assert all(len(s.instances) == len(s.targets) > 0 for s in data.train)
    with pytest.raises(SamlabelError, match="no valid split; pass --val-fraction"):
        load_training_data(ds, val_fraction=0.0)


def test_training_data_needs_masks(tmp_path):
    folder = tmp_path / "boxes"
    write_coco_split(folder / "train", 2, np.random.default_rng(0))
    path = folder / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    for ann in coco["annotations"]:
        del ann["segmentation"]
    path.write_text(json.dumps(coco))
    with pytest.raises(SamlabelError, match="needs polygon or RLE masks"):
        load_training_data(folder)


# ------------------------------------------------------------------------------------------- the cache


def test_embedding_cache_is_reused_and_invalidated_by_other_weights(shapes, tmp_path):
    data = load_training_data(shapes.ds)
    samples = data.train[:2]
    calls = []

    def counted(path):
        sam = TrainableSam(path, "mobile_sam", device="cpu")
        forward = sam.model.image_encoder.forward
        sam.model.image_encoder.forward = lambda x: (calls.append(path.name), forward(x))[1]
        return sam

    sam = counted(shapes.base)
    first = [make_features(sam, EmbeddingCache(shapes.cache, sam.features_key()))(s) for s in samples]
    assert len(calls) == 2
    cache = EmbeddingCache(shapes.cache, sam.features_key())  # a new run: nothing in memory
    again = [make_features(sam, cache)(s) for s in samples]
    assert len(calls) == 2 and cache.hits == 2 and cache.misses == 0  # read from disk, encoder not called
    assert all(torch.equal(a["image_embed"], b["image_embed"]) for a, b in zip(first, again, strict=True))
    assert first[0]["image_embed"].shape == (1, 256, 64, 64)

    # a fine-tuned checkpoint (same encoder, other decoder) reuses the embeddings of its base
    tuned = counted(shapes.base)
    with torch.no_grad():
        for p in tuned.mask_decoder.parameters():
            p.add_(1.0)
    assert tuned.features_key() == sam.features_key()

    # other weights: another key, other files, the encoder runs
    other = counted(make_plain_sam_checkpoint(tmp_path / "other_mobile_sam.pt", seed=2))
    assert other.features_key() != sam.features_key()
    cache = EmbeddingCache(shapes.cache, other.features_key())
    make_features(other, cache)(samples[0])
    assert calls[-1] == "other_mobile_sam.pt" and cache.misses == 1

    # a torn file is computed again
    cache = EmbeddingCache(shapes.cache, sam.features_key())
    cache.path(samples[0].digest).write_bytes(b"not a tensor file")
    n = len(calls)
    assert torch.equal(make_features(sam, cache)(samples[0])["image_embed"], first[0]["image_embed"])
    assert len(calls) == n + 1 and cache.misses == 1


# -------------------------------------------------------------------------------------------- training


def _heldout_iou(weights: Path, folder: Path, out: Path, *, arch: str = "mobile_sam") -> float:
    """``convert --resegment`` of a COCO folder with ``weights`` (the SAM stage), then ``evaluate``: IoU per object."""
    import pipeline
    from pipeline.evaluate import evaluate

    coco = folder / "_annotations.coco.json"
    pipeline.convert(
        coco, out, images=folder, segmenter=str(weights), resegment=True, progress=False, **{**STAGE, "sam_arch": arch}
    )
    r = evaluate(out, coco, gt_images=folder, match_iou=0.0)
    return (r["mask_iou"]["mean"] or 0.0) * r["matched"] / r["instances"]["gt"]


def test_finetune_raises_heldout_mask_iou_and_the_file_works_in_the_sam_stage(shapes):
    out = shapes.root / "models" / "my_sam.pt"  # any name: the SAM stage is told the architecture
    result = finetune(shapes.ds, out, segmenter=shapes.base, cache_dir=shapes.cache, progress=False, **TRAIN)
    curve = result["curve"]
    assert [p["epoch"] for p in curve] == list(range(TRAIN["epochs"] + 1))
    assert result["best"]["val_iou"] == max(p["val_iou"] for p in curve)
    assert result["best"]["val_iou"] > result["baseline"]["val_iou"] + 0.2
    assert json.loads(Paths(out).curve.read_text())["curve"] == json.loads(json.dumps(curve))

    # the checkpoint: the full state dict, as the released weights; only the mask decoder changed
    base_state = torch.load(shapes.base, map_location="cpu")
    state = torch.load(out, map_location="cpu")
    assert list(state) == list(base_state)
    changed = {k.split(".")[0] for k in state if not torch.equal(state[k], base_state[k])}
    assert changed == {"mask_decoder"}
    # Ultralytics' own builder loads it (it picks the architecture from the name's end)
    from ultralytics.models.sam.build import build_sam

    named = shapes.root / "models" / "renamed_mobile_sam.pt"
    named.write_bytes(out.read_bytes())
    built = build_sam(str(named)).state_dict()
    assert all(torch.equal(built[k], state[k]) for k in state)

    # held-out images, never trained or validated on: the SAM stage with each file, measured with evaluate
    before = _heldout_iou(shapes.base, shapes.heldout, shapes.root / "pred_before")
    after = _heldout_iou(out, shapes.heldout, shapes.root / "pred_after")
    assert after > before + 0.2, (before, after)

    # the validation IoU is what evaluate measures on the SAM stage's masks (float16-cached embeddings aside)
    valid = _heldout_iou(out, shapes.ds / "valid", shapes.root / "pred_valid")
    assert valid == pytest.approx(result["best"]["val_iou"], abs=0.02)


def test_finetune_refuses_to_mix_runs_and_skips_a_finished_one(shapes):
    out = shapes.root / "refuse" / "x_mobile_sam.pt"
    first = finetune(
        shapes.ds, out, segmenter=shapes.base, cache_dir=shapes.cache, progress=False, epochs=1, batch=8, clicks=0
    )
    again = finetune(
        shapes.ds, out, segmenter=shapes.base, cache_dir=shapes.cache, progress=False, epochs=1, batch=8, clicks=0
    )
    assert again == first  # finished: nothing redone
    with pytest.raises(SamlabelError, match=r"other --batch, --lr; refusing to mix"):
        finetune(
            shapes.ds,
            out,
            segmenter=shapes.base,
            cache_dir=shapes.cache,
            progress=False,
            epochs=1,
            batch=4,
            clicks=0,
            lr=1e-3,
        )
    with pytest.raises(SamlabelError, match="is the --segmenter file itself"):
        finetune(shapes.ds, shapes.base, segmenter=shapes.base, cache_dir=shapes.cache)
    with pytest.raises(SamlabelError, match="--sam-arch sam_x: expected one of"):
        finetune(shapes.ds, out.with_name("y.pt"), segmenter=shapes.base, arch="sam_x", cache_dir=shapes.cache)


# ---------------------------------------------------------------------------------------------- resume


RESUME = ["--epochs", "3", "--batch", "4", "--clicks", "1", "--lr", "1e-3", "--patience", "0"]


def _wait_for_epoch(state_path: Path, proc: subprocess.Popen, epoch: int, timeout: float = 120) -> int:
    """Poll the resume state until it records ``epoch`` finished epochs; returns the epoch it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_path.is_file():
            try:
                done = torch.load(state_path, map_location="cpu", weights_only=False)["epoch"]
            except (OSError, RuntimeError, EOFError):  # replaced while being read
                done = -1
            if done >= epoch:
                return done
        if proc.poll() is not None:
            raise AssertionError(f"finetune exited early: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError("no epoch finished in time")


def test_killed_finetune_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_run(shapes):
    killed = shapes.root / "resume" / "killed_mobile_sam.pt"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "finetune",
        str(shapes.ds),
        "--out",
        str(killed),
        "--segmenter",
        str(shapes.base),
        "--cache-dir",
        str(shapes.cache),
        "-q",
        *RESUME,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMLABEL_THREADS": str(default_threads())}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        at_kill = _wait_for_epoch(Paths(killed).state, proc, epoch=1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 1 <= at_kill < 3, "the run finished before it could be killed"

    options = dict(epochs=3, batch=4, clicks=1, lr=1e-3, patience=0)
    resumed = finetune(shapes.ds, killed, segmenter=shapes.base, cache_dir=shapes.cache, progress=False, **options)
    assert resumed["cache"]["misses"] == 0  # every embedding came from the cache
    whole = shapes.root / "resume" / "whole_mobile_sam.pt"
    straight = finetune(shapes.ds, whole, segmenter=shapes.base, cache_dir=shapes.cache, progress=False, **options)

    assert [p["val_iou"] for p in resumed["curve"]] == [p["val_iou"] for p in straight["curve"]]
    assert [p["train_loss"] for p in resumed["curve"]] == [p["train_loss"] for p in straight["curve"]]
    a, b = torch.load(killed, map_location="cpu"), torch.load(whole, map_location="cpu")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit on the CPU
    sa = torch.load(Paths(killed).state, map_location="cpu", weights_only=False)
    sb = torch.load(Paths(whole).state, map_location="cpu", weights_only=False)
    assert all(torch.equal(sa["trained"][k], sb["trained"][k]) for k in sa["trained"])


@pytest.mark.slow
def test_finetune_sam2_trains_its_decoder_and_the_sam_stage_loads_the_result(tmp_path):
    ds = write_coco_dataset(tmp_path / "ds", {"train": 2, "valid": 1}, seed=5, **SHAPES)
    base = make_plain_sam_checkpoint(tmp_path / "base" / "sam2.1_t.pt")
    out = tmp_path / "models" / "shapes_sam2.1_t.pt"
    result = finetune(
        ds, out, segmenter=base, cache_dir=tmp_path / "cache", progress=False, epochs=1, batch=2, clicks=1, patience=0
    )
    assert [p["epoch"] for p in result["curve"]] == [0, 1]
    base_state = torch.load(base, map_location="cpu")
    assert list(torch.load(out, map_location="cpu")) == list(base_state)
    trained = torch.load(Paths(out).state, map_location="cpu", weights_only=False)["trained"]
    names = {"mask_decoder": "sam_mask_decoder", "prompt_encoder": "sam_prompt_encoder"}
    changed = {
        k for k, v in trained.items() if not torch.equal(v, base_state[names[k.split(".")[0]] + k[k.index(".") :]])
    }
    # SAM2's conv_s0 / conv_s1 act on the backbone features before they are cached: frozen with the encoder
    assert changed and all(k.startswith("mask_decoder.") and ".conv_s" not in k for k in changed)
    _heldout_iou(out, ds / "valid", tmp_path / "pred", arch="sam2.1_t")  # the SAM stage loads and runs the checkpoint


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_prints_the_before_after_table_and_writes_the_curve(shapes, capsys):
    from pipeline.cli import main

    out = shapes.root / "cli" / "tuned.pt"
    argv = [
        "finetune",
        str(shapes.ds),
        "--out",
        str(out),
        "--segmenter",
        str(shapes.base),
        "--cache-dir",
        str(shapes.cache),
        "-q",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--clicks",
        "0",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "before     after    change" in printed
    curve = json.loads(Paths(out).curve.read_text())
    rows = {ln.split()[0]: ln.split()[1:] for ln in printed.splitlines() if ln.split()[:1] in (["all"], ["disc"])}
    assert float(rows["all"][0]) == pytest.approx(curve["baseline"]["val_iou"], abs=1e-4)
    assert float(rows["all"][1]) == pytest.approx(curve["best"]["val_iou"], abs=1e-4)
    assert [p["epoch"] for p in curve["curve"]] == [0, 1] and curve["finished"]
    # the printed table again, from the finished run, without training
    assert main(argv) == 0 and capsys.readouterr().out == printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--train", "everything"], None),  # argparse: invalid choice, exit 2
        (["--out", "model.onnx"], "give a .pt file name"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(shapes, tmp_path, capsys, extra, message):
    from pipeline.cli import main

    argv = ["finetune", str(shapes.ds), "--out", str(tmp_path / "m.pt"), "--segmenter", str(shapes.base), *extra]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    if message:
        [line] = [ln for ln in err.splitlines() if ln.startswith("samlabel: error:")]
        assert message in line
    assert not (tmp_path / "m.pt").exists()


def test_cli_missing_default_weights_offline_is_one_line(shapes, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    offline(monkeypatch, tmp_path)
    code = main(["finetune", str(shapes.ds), "--out", str(tmp_path / "m.pt"), "-q"])  # --segmenter mobile_sam.pt
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("samlabel: error:")]
    assert "mobile_sam.pt" in line and "--segmenter PATH" in line
    assert not (tmp_path / "m.pt").exists()


def test_reviewed_only_trains_on_the_images_checked_in_review(tmp_path, shapes):
    """A review save appends the image's record with ``reviewed`` set; only those images are used."""
    import dataclasses

    from pipeline.run.state import Journal
    from tests.review_helpers import make_dataset

    out = make_dataset(tmp_path)
    records = [rec for _, rec in Journal(out).records() if rec.status == "ok"]
    chosen = records[1:]
    with Journal(out).appender() as append:
        for rec in chosen:
            append(dataclasses.replace(rec, reviewed=True))

    def names(data) -> set[str]:
        return {s.path.name for s in [*data.train, *data.valid]}

    every = load_training_data(out, val_fraction=0.5)
    data = load_training_data(out, reviewed_only=True, val_fraction=0.5)
    assert names(data) == names(every) & {rec.name for rec in chosen}
    assert records[0].name in names(every) - names(data)
    assert data.skipped["images not reviewed"] == len(records) - len(chosen)
    assert data.digest() != every.digest()  # another data set: a resume of the other run is refused
    with pytest.raises(SamlabelError, match="--reviewed-only: .* is not a dataset written by samlabel"):
        load_training_data(shapes.ds, reviewed_only=True)
