"""The ``samlabel`` command end to end, on real Ultralytics YOLO + SAM code with offline checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from tests.checkpoints import make_sam_checkpoint, make_yolo_checkpoint
from tests.helpers import (
    assert_valid,
    check_yolo_matches_coco,
    coco_by_image,
    coco_data,
    label_files_bytes,
    offline,
    splits_of,
    ultralytics_segment_labels,
)

NAMES = ["ball", "cube", "cone"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    return make_yolo_checkpoint(d / "det.pt", NAMES), make_sam_checkpoint(d / "mobile_sam.pt")


def _samlabel(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_label_with_offline_checkpoints(image_folder, tmp_path, weights):
    """Issue 2's acceptance: nested folder, mixed .jpg/.JPG/.png, grayscale image, real models."""
    det, sam = weights
    out = tmp_path / "ds"
    args = [
        "label",
        image_folder,
        "--out",
        out,
        "--detector",
        det,
        "--segmenter",
        sam,
        "--max-det",
        4,
        "-q",
        "--runtime",
        "torch",
    ]
    proc = _samlabel(*args)
    assert proc.returncode == 0, proc.stderr
    # Ultralytics: check_det_dataset + its segment loader read it, with the detector's class names
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == NAMES
    labels = ultralytics_segment_labels(out)
    assert sum(len(v) for v in labels.values()) == 6
    # pycocotools per split; YOLO and COCO hold the same instances per image
    n = check_yolo_matches_coco(out)
    assert n > 0
    report = yaml.safe_load((out / "report.json").read_text())
    assert report["instances_total"] == n and report["skipped_images"] == []
    # every image in exactly one split
    names = [p.name for s in splits_of(out) for p in (out / s / "images").iterdir()]
    assert len(names) == len(set(names)) == 6
    # the rigged SAM answers "whole image, score 0.9" for every box: each detector box is one instance
    for split in splits_of(out):
        for anns in coco_by_image(out, split).values():
            assert len(anns) <= 4
            for a in anns:
                assert a["mask_score"] == pytest.approx(0.9, abs=1e-4) and a["confidence"] >= 0.25
    # re-running gives the same splits and byte-identical label files
    again = tmp_path / "again"
    proc = _samlabel(*args[:3], again, *args[4:])
    assert proc.returncode == 0, proc.stderr
    assert label_files_bytes(out) == label_files_bytes(again)
    assert coco_data(out) == coco_data(again)
    for ds in (out, again):
        assert_valid(ds)
        proc = _samlabel("validate", ds)
        assert proc.returncode == 0 and "OK" in proc.stderr, proc.stdout


@pytest.mark.parametrize(
    "flag, name",
    [("--detector", "yolov8n.pt"), ("--segmenter", "mobile_sam.pt"), ("--detector", "missing/dir/best.pt")],
)
def test_missing_weights_one_line_exit_2(tmp_path, image_folder, weights, flag, name, monkeypatch, capsys):
    """The same test everywhere: an empty Ultralytics weights folder, and no network (blocked in this process)."""
    det, sam = weights
    offline(monkeypatch, tmp_path)
    chosen = {"--detector": str(det), "--segmenter": str(sam), flag: name}
    argv = ["label", str(image_folder), "--out", str(tmp_path / "o"), "-q", "--runtime", "torch"]
    code = main([*argv, "--detector", chosen["--detector"], "--segmenter", chosen["--segmenter"]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("samlabel: error:")]
    assert name in line and f"{flag} PATH" in line
    assert not (tmp_path / name).exists()  # nothing half-downloaded left behind
    assert not (tmp_path / "ultralytics-weights" / Path(name).name).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["label", "nowhere/", "--out", "o"], "does not exist"),
        (["label", ".", "--out", "o", "--split", "train=0"], "bad --split"),
        (["label", ".", "--out", "o", "--formats", "voc"], "formats"),
        (["label", ".", "--out", "o", "--config", "missing.yaml"], "cannot read"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "make, flags, message",
    [
        (None, ["--device", "99"], "--device 99: not usable here"),  # no machine has GPU 99
        (lambda d: (d / "text.pt").write_text("not weights"), ["--detector", "text.pt"], "--detector text.pt: cannot"),
        (lambda d: (d / "mobile_sam.pt").write_bytes(b"\x80junk"), ["--segmenter", "mobile_sam.pt"], "--segmenter"),
    ],
    ids=["device", "detector-file", "segmenter-file"],
)
def test_bad_device_or_weights_file_exits_2_with_one_line(
    tmp_path, image_folder, weights, capsys, make, flags, message
):
    det, sam = weights
    if make:
        make(tmp_path)
    args = {"--detector": str(det), "--segmenter": str(sam)}
    args.update({flags[0]: str(tmp_path / flags[1]) if make else flags[1]})
    argv = ["label", str(image_folder), "--out", str(tmp_path / "o"), *[x for kv in args.items() for x in kv]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("samlabel: error:")]
    assert message.replace("text.pt", str(tmp_path / "text.pt")) in line


def test_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["label", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["yolo", "coco"])
def test_convert_roboflow_export_with_offline_checkpoint(tmp_path, weights, layout):
    """Issue 3's acceptance: Roboflow exports convert with real SAM code; splits, names, images, instances kept."""
    from tests.roboflow import NAMES as RF_NAMES
    from tests.roboflow import expected_counts, roboflow_coco, roboflow_yolo

    src = (roboflow_yolo if layout == "yolo" else roboflow_coco)(tmp_path / "src")
    out = tmp_path / "out"
    proc = _samlabel("convert", src, "--out", out, "--segmenter", weights[1], "-q", "--runtime", "torch")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == RF_NAMES
    assert splits_of(out) == ["train", "valid", "test"]
    counts = {
        s: {
            n.rsplit(".", 1)[0]: sorted(a["category_id"] - 1 for a in anns) for n, anns in coco_by_image(out, s).items()
        }
        for s in splits_of(out)
    }
    assert counts == expected_counts()
    assert sum(len(v) for v in ultralytics_segment_labels(out).values()) == 5
    check_yolo_matches_coco(out)
    assert_valid(out)


def test_sam_arch_loads_a_renamed_checkpoint_from_a_read_only_folder_on_onnx(tmp_path, weights):
    """Issue 10's acceptance: `--sam-arch mobile_sam` loads my_finetuned.pt; `--runtime onnx` works with the
    weights in a read-only folder (exports go to --cache-dir, nothing is written beside the weights)."""
    import os
    import shutil

    from tests.roboflow import roboflow_yolo

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(weights[1], models / "my_finetuned.pt")
    os.chmod(models, 0o555)
    try:
        src = roboflow_yolo(tmp_path / "src")
        args = ("convert", src, "--segmenter", models / "my_finetuned.pt", "-q", "--runtime", "onnx")
        refused = _samlabel(*args, "--out", tmp_path / "no")
        assert refused.returncode == 2 and "--sam-arch" in refused.stderr and "Traceback" not in refused.stderr
        cache = tmp_path / "cache"
        proc = _samlabel(*args, "--out", tmp_path / "out", "--sam-arch", "mobile_sam", "--cache-dir", cache)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in models.iterdir()) == ["my_finetuned.pt"]
        assert any(p.suffix == ".onnx" for p in cache.rglob("*"))
        assert_valid(tmp_path / "out")
    finally:
        os.chmod(models, 0o755)


def test_the_parser_imports_no_model_library(tmp_path):
    """Start-up: building the command line (every command, ``--help`` included) imports neither PyTorch nor SciPy
    nor the fine-tuning loop; a command imports what it needs when it runs."""
    code = (
        "import sys\nfrom pipeline.cli import build_parser\nbuild_parser()\n"
        "heavy = ('torch', 'scipy', 'ultralytics', 'onnxruntime', 'matplotlib', 'supervision', 'pipeline.finetune.run')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip() == "[]"
