"""Quality signals on every instance of a run: COCO fields, report.json counts, --drop-flags, report.html."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import label
from pipeline.errors import SamlabelError
from pipeline.quality import compute_signals, flag
from pipeline.types import CropMask, Instances
from tests.conftest import FakeDetector, FakeSegmenter, draw_scene
from tests.helpers import assert_valid, coco_by_image


class Leaky(FakeSegmenter):
    """Box 0 of each image gets its disc plus a bar far outside its box (leaks_box); the others are exact."""

    def __call__(self, rgb, instances):
        out = super().__call__(rgb, instances)
        masks = list(out.masks)
        full = masks[0].full(rgb.shape[:2])
        full[-4:, :] = True  # a bar along the bottom edge
        masks[0] = CropMask.from_full(full)
        return out.replace(masks=tuple(masks))


@pytest.fixture
def scenes(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i, discs in enumerate([((30, 30, 12), (100, 60, 20)), ((60, 50, 25),)]):
        Image.fromarray(draw_scene(hw=(120, 160), discs=discs)).save(src / f"s{i}.png")
    return src


def test_every_annotation_carries_its_signals_and_the_report_counts_flags(scenes, tmp_path):
    out = tmp_path / "ds"
    report = label(
        scenes, out, detector=FakeDetector(extra_tiny_box=False), segmenter=Leaky(), split="train=1", progress=False
    ).report
    anns = [a for anns in coco_by_image(out, "train").values() for a in anns]
    assert len(anns) == 3
    for a in anns:
        assert {"box_fit", "outside_box", "parts", "largest_part", "overlap", "flags"} <= set(a)
    leaky = [a for a in anns if "leaks_box" in a["flags"]]
    assert len(leaky) == 2 and all(a["outside_box"] > 0.1 for a in leaky)  # box 0 of each image
    assert all(a["parts"] == 2 for a in leaky) and all(a["flags"] == [] for a in anns if a not in leaky)
    q = report["quality"]
    assert q["flag_counts"]["leaks_box"] == 2 and q["instances_flagged"] == 2
    assert {f["image"] for f in q["flagged"]} == {"train/images/s0.png", "train/images/s1.png"}
    assert all("leaks_box" in f["flags"] and f["outside_box"] > 0.1 for f in q["flagged"])
    assert (out / "report.html").is_file()
    assert_valid(out)


def test_drop_flags_leave_instances_out_and_say_why(scenes, tmp_path):
    out = tmp_path / "ds"
    report = label(
        scenes,
        out,
        detector=FakeDetector(extra_tiny_box=False),
        segmenter=Leaky(),
        split="train=1",
        drop_flags="leaks_box",
        progress=False,
    ).report
    assert report["instances_total"] == 1
    dropped = report["dropped_instances"]
    assert len(dropped) == 2 and all(d["reason"] == "flagged leaks_box (--drop-flags)" for d in dropped)
    assert all("leaks_box" in d["flags"] for d in dropped)
    lines = [(out / "train" / "labels" / f"s{i}.txt").read_text().splitlines() for i in range(2)]
    assert [len(x) for x in lines] == [1, 0]
    assert_valid(out)


def test_unknown_drop_flag_and_bad_threshold_are_refused(scenes, tmp_path):
    with pytest.raises(SamlabelError, match="unknown flag"):
        label(scenes, tmp_path / "a", detector=FakeDetector(), segmenter=FakeSegmenter(), drop_flags="leaky")
    with pytest.raises(SamlabelError, match="thresholds: bad entry"):
        label(scenes, tmp_path / "b", detector=FakeDetector(), segmenter=FakeSegmenter(), thresholds="max_leak=2")


def test_thresholds_setting_moves_a_flag(scenes, tmp_path):
    out = tmp_path / "ds"
    report = label(
        scenes,
        out,
        detector=FakeDetector(extra_tiny_box=False),
        segmenter=Leaky(),
        split="train=1",
        thresholds="max_outside_box=0.9",
        progress=False,
    ).report
    assert "leaks_box" not in report["quality"]["flag_counts"]
    assert report["quality"]["thresholds"]["max_outside_box"] == 0.9


def test_duplicate_marks_only_the_worse_of_a_pair():
    square = np.zeros((20, 20), bool)
    square[2:10, 2:10] = True
    masks = [CropMask.from_full(square)] * 3
    inst = Instances(xyxy=[[2, 2, 10, 10]] * 3, class_id=[0, 1, 0], confidence=[0.5, 0.9, 0.5])
    s = compute_signals(masks, inst.xyxy, (20, 20))
    assert flag(s) == [["duplicate"]] * 3  # without a rank: all of them
    ranked = flag(s, rank=inst.confidence)
    assert ranked == [["duplicate"], [], ["duplicate"]]  # the best (index 1) is kept


def test_report_and_evaluate_commands(scenes, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "ds"
    label(scenes, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["evaluate", str(out), "--gt", str(out), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["segm"]["AP"] == pytest.approx(1.0) and result["mask_iou"]["mean"] == pytest.approx(1.0)
    assert "AP50" in capsys.readouterr().out


def test_low_score_instances_follow_the_min_mask_score_threshold(scenes, tmp_path):
    """With --thresholds min_mask_score=0.6, report.json's low_score_instances lists exactly the instances
    flagged low_score (the fake scores are 0.5, 0.51 ...: all below 0.6, none below the old fixed 0.5)."""
    kw = dict(detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    report = label(scenes, tmp_path / "ds", thresholds="min_mask_score=0.6", **kw).report
    low = report["low_score_instances"]
    assert low["below_mask_score"] == 0.6 == report["quality"]["thresholds"]["min_mask_score"]
    flagged = {(f["image"], f["source_id"]) for f in report["quality"]["flagged"] if "low_score" in f["flags"]}
    assert len(flagged) == report["instances_total"] > 0
    assert {(r["image"], r["source_id"]) for r in low["instances"]} == flagged
    assert report["quality"]["flag_counts"]["low_score"] == len(low["instances"])
