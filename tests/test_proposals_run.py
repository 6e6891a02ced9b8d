"""Proposals through a whole run: a killed and resumed run, and ``--engine ray``, end equal to a clean local run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import label
from pipeline.run.state import Journal
from tests.conftest import FakeSegmenter
from tests.helpers import assert_valid, coco_data, label_files_bytes
from tests.proposal_helpers import FakeGenerator, MissingDetector, make_three_disc_images

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from pipeline import label
from tests.conftest import FakeSegmenter
from tests.proposal_helpers import FakeGenerator, MissingDetector

class Slow(FakeGenerator):
    def __call__(self, rgb, covered=None):
        time.sleep({delay})
        return super().__call__(rgb, covered)

label({src!r}, {out!r}, detector=MissingDetector(), segmenter=FakeSegmenter(), generator=Slow(), propose=True,
      progress=False)
"""


def _fakes() -> dict:
    return dict(detector=MissingDetector(), segmenter=FakeSegmenter(), generator=FakeGenerator(), propose=True,
                progress=False)  # fmt: skip


def _proposals(out: Path) -> dict[str, list]:
    """rel -> the newest record's proposals as the journal holds them, scores rounded (floats are not compared
    bitwise)."""
    newest = {r.rel: r for _, r in Journal(out).records()}
    out_ = {}
    for rel, r in sorted(newest.items()):
        rows = r.to_json().get("proposals", [])
        out_[rel] = [{**p, "mask_score": round(p["mask_score"], 4)} for p in rows]
    return out_


def _same(a: Path, b: Path) -> None:
    assert label_files_bytes(a) == label_files_bytes(b)
    assert coco_data(a) == coco_data(b)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for key in ("images", "instances", "proposals", "dropped_instances"):
        assert ra[key] == rb[key], key
    assert _proposals(a) == _proposals(b)
    assert_valid(b)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    return make_three_disc_images(tmp_path_factory.mktemp("many") / "src", n=24)


@pytest.fixture(scope="module")
def clean(many, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "ds"
    label(many, out, **_fakes())
    return out


def _journal_lines(out: Path) -> int:
    path = out / ".samlabel" / "journal.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_kill_and_resume_equals_a_clean_run_with_proposals(many, clean, tmp_path):
    out = tmp_path / "killed"
    rng = np.random.default_rng(22)
    progress = []

    def start() -> subprocess.Popen:
        code = SCRIPT.format(root=str(ROOT), src=str(many), out=str(out), delay=0.08)
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for _ in range(3):
        proc = start()
        target = _journal_lines(out) + int(rng.integers(1, 6))
        deadline = time.time() + 120
        while _journal_lines(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.08)))  # a random moment inside the next image's generator
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        progress.append(_journal_lines(out))
    proc = start()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 0 < progress[0] and progress[-1] < 24  # the kills interrupted the run, after some work
    _same(clean, out)
    assert json.loads((out / "report.json").read_text())["proposals"]["total"] == 24
    assert not list(out.rglob("*.tmp"))


@pytest.mark.ray
def test_proposals_on_ray_equal_local(clean, many, tmp_path):
    pytest.importorskip("ray")
    from tests.helpers import local_ray

    with local_ray():
        result = label(many, tmp_path / "ray", engine="ray", **_fakes())
    _same(clean, tmp_path / "ray")
    assert "propose" in result.report["timings"]["this_run"]["stage_seconds"]


@pytest.mark.parametrize("command", ["label", "convert"])
def test_propose_runs_the_real_generator_on_the_runs_own_sam_one_encoding_per_image(
    command, plain_mobile_sam, tmp_path, monkeypatch
):
    """``--propose`` with SAM's automatic mask generator (random-weight MobileSAM): the grid shares the box pass's
    encoder output (one encoding per image), its time is the ``propose`` stage, and the dataset stays valid."""
    from pipeline import convert
    from pipeline.sam import segmenter as segmenter_module

    encoded = []
    set_image = segmenter_module.Segmenter.set_image

    def counting(self, rgb):
        before = self._last_embedding
        out = set_image(self, rgb)
        encoded.append(out is not (before[1] if before else None))
        return out

    monkeypatch.setattr(segmenter_module.Segmenter, "set_image", counting)
    src = make_three_disc_images(tmp_path / "src", n=2)
    loose = dict(points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0, runtime="torch", progress=False)
    out = tmp_path / "out"
    if command == "label":
        result = label(src, out, detector=MissingDetector(), segmenter=str(plain_mobile_sam), propose=True, **loose)
    else:  # a box dataset (the fake detector's boxes written as YOLO labels); SAM is loaded on first use
        boxes = label(src, tmp_path / "boxes", detector=MissingDetector(), segmenter=FakeSegmenter(), progress=False)
        del boxes
        result = convert(tmp_path / "boxes", out, segmenter=str(plain_mobile_sam), resegment=True, propose=True,
                         **loose)  # fmt: skip
    report = result.report
    assert encoded.count(True) == 2, encoded  # two images, each encoded once for its boxes and its grid
    assert len(encoded) >= 4  # the generator asked too, and got the box pass's embedding back
    assert "propose" in report["timings"]["total"]["stage_seconds"]
    assert report["proposals"]["total"] == sum(report["proposals"]["images"].values())
    assert_valid(out)
