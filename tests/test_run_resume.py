"""Interrupted runs resume to the same dataset a clean run writes."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import label
from pipeline.errors import SamlabelError
from tests.conftest import FakeDetector, FakeSegmenter, draw_scene
from tests.helpers import assert_valid, coco_data, label_files_bytes

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from pipeline import label
from tests.conftest import FakeDetector, FakeSegmenter

class Slow(FakeSegmenter):
    def __call__(self, rgb, inst):
        time.sleep({delay})
        return super().__call__(rgb, inst)

label({src!r}, {out!r}, detector=FakeDetector(), segmenter=Slow(), progress=False)
"""


@pytest.fixture
def many_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        discs = [(int(rng.integers(10, 70)), int(rng.integers(10, 50)), int(rng.integers(3, 9))) for _ in range(3)]
        Image.fromarray(draw_scene(hw=(64, 80), discs=discs)).save(src / f"img_{i:02d}.png")
    return src


def _start(src, out, delay=0.1):
    code = SCRIPT.format(root=str(ROOT), src=str(src), out=str(out), delay=delay)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fill_disk_after(n: int, monkeypatch):
    """Label files fail with ENOSPC after the first ``n``; returns the real writer (to undo with monkeypatch)."""
    import pipeline.formats.yolo as yolo_seg

    real = yolo_seg.fsio.write_text
    calls = {"n": 0}

    def full(path, text):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr(yolo_seg.fsio, "write_text", full)
    return real


def _journal_lines(out):
    path = out / ".samlabel" / "journal.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_at_random_moments_then_resume_equals_clean_run(many_images, tmp_path):
    clean = tmp_path / "clean"
    label(many_images, clean, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)

    out = tmp_path / "killed"
    rng = np.random.default_rng(7)
    progress = []
    for _ in range(4):
        proc = _start(many_images, out)
        # kill once the run has made a random amount of progress (waiting on the journal, not on the clock)
        target = _journal_lines(out) + int(rng.integers(1, 8))
        deadline = time.time() + 120
        while _journal_lines(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.1)))  # and at a random moment within the next image
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        progress.append(_journal_lines(out))
    proc = _start(many_images, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 0 < progress[0] and progress[-1] < 40  # the kills really interrupted the run, after some work
    assert label_files_bytes(out) == label_files_bytes(clean)
    assert coco_data(out) == coco_data(clean)
    assert (
        json.loads((out / "report.json").read_text())["images"]
        == json.loads((clean / "report.json").read_text())["images"]
    )
    assert not list(out.rglob("*.tmp"))  # no half-written files at final names, no temp files left
    assert_valid(out)


def test_torn_journal_line_is_dropped_on_resume(many_images, tmp_path):
    out = tmp_path / "ds"
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    journal = out / ".samlabel" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])  # killed mid-write
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    assert journal.read_text().count("\n") == 40
    assert sum(json.loads((out / "report.json").read_text())["images"].values()) == 40


def test_ctrl_c_stops_cleanly_says_how_to_resume(many_images, tmp_path):
    out = tmp_path / "ds"
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from pipeline.cli import main
import pipeline.api as api
from tests.conftest import FakeDetector, FakeSegmenter

class Slow(FakeSegmenter):
    def __call__(self, rgb, inst):
        time.sleep(0.05)
        return super().__call__(rgb, inst)

real = api.label
api.label = lambda *a, **k: real(*a, **{{**k, "detector": FakeDetector(), "segmenter": Slow()}})
sys.exit(main(["label", {str(many_images)!r}, "--out", {str(out)!r}, "-q"]))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while _journal_lines(out) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "run the same command again to resume" in err and "Traceback" not in err
    done = _journal_lines(out)
    assert 3 <= done < 40
    said = re.search(r"interrupted: (\d+) images are saved", err)
    assert said and int(said.group(1)) == done  # the count is right even with the progress bar off (-q)


def test_disk_full_mid_run_is_a_clear_error_and_resumable(many_images, tmp_path, monkeypatch):
    import pipeline.formats.yolo as yolo_seg

    out = tmp_path / "ds"
    real = _fill_disk_after(10, monkeypatch)
    with pytest.raises(SamlabelError, match="No space left on device.*run the same command again to resume"):
        label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    assert 0 < _journal_lines(out) < 40  # the images before the failure are saved
    monkeypatch.setattr(yolo_seg.fsio, "write_text", real)
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    clean = tmp_path / "clean"
    label(many_images, clean, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    assert label_files_bytes(out) == label_files_bytes(clean)
    assert_valid(out)


def test_a_second_run_into_the_same_folder_is_refused_while_one_runs(many_images, tmp_path):
    import fcntl

    out = tmp_path / "ds"
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    before = label_files_bytes(out)
    with open(out / ".samlabel" / "lock", "a+") as held:  # what a running samlabel holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SamlabelError, match="another samlabel run is writing"):
            label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, overwrite=True)
    assert label_files_bytes(out) == before  # --overwrite did not clear a folder another run holds


def test_an_image_gets_the_same_record_alone_and_third_in_a_run(tmp_path):
    """A real detector whose confidences are tied: the first image of a run (as after a resume) and a later one
    run the model at the same thread count, so the whole record (boxes, scores, masks, extras) is the same.
    (Ultralytics set PyTorch to 1 thread inside the first call: the boxes then differed in the last bits.)"""
    from pipeline.run.state import Journal
    from tests.checkpoints import make_yolo_checkpoint

    det = make_yolo_checkpoint(tmp_path / "w" / "det.pt", ["ball", "cube", "cone"])
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 200, (240, 320, 3), dtype=np.uint8)).save(src / f"im{i}.png")  # no mask: fast
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "im2.png").write_bytes((src / "im2.png").read_bytes())
    kw = dict(detector=str(det), segmenter=FakeSegmenter(), split="train=1", progress=False)
    label(src, tmp_path / "run", **kw)
    label(alone, tmp_path / "one", **kw)

    def record(out):
        [rec] = [r.to_json() for _, r in Journal(out).records() if r.rel == "im2.png"]
        return {k: v for k, v in rec.items() if k != "source"}

    third, first = record(tmp_path / "run"), record(tmp_path / "one")
    assert len(first["instances"]) + len(first["dropped"]) == 300
    assert third == first


def _timings(out):
    return json.loads((out / "report.json").read_text())["timings"]


def test_rerunning_a_finished_dataset_keeps_the_timings_of_the_runs_that_made_it(many_images, tmp_path):
    out = tmp_path / "ds"
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    first = _timings(out)
    assert first["runs"] == 1 and first["total"] == first["this_run"] and first["total"]["images"] == 40
    assert first["total"]["seconds"] > 0 and set(first["total"]["stage_seconds"]) >= {"detect", "segment", "read"}
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    again = _timings(out)
    assert again["total"] == first["total"] and again["runs"] == 1
    assert again["this_run"]["images"] == 0 and again["this_run"]["images_per_second"] is None


def test_timings_add_up_over_an_interrupted_and_a_resumed_run(many_images, tmp_path, monkeypatch):
    import pipeline.formats.yolo as yolo_seg
    from pipeline.run.state import runs

    out = tmp_path / "ds"
    real = _fill_disk_after(10, monkeypatch)
    with pytest.raises(SamlabelError):
        label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    done = _journal_lines(out)
    monkeypatch.setattr(yolo_seg.fsio, "write_text", real)
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    t, shares = _timings(out), runs(out)
    assert 0 < done < 40 and t["runs"] == len(shares) == 2 and [s["images"] for s in shares] == [done, 40 - done]
    assert t["total"]["images"] == 40 and t["this_run"]["images"] == 40 - done
    assert t["total"]["seconds"] == pytest.approx(sum(s["seconds"] for s in shares), abs=2e-3)


def test_a_killed_runs_time_is_lost_never_counted_twice(many_images, tmp_path):
    out = tmp_path / "ds"
    proc = _start(many_images, out, delay=0.05)
    deadline = time.time() + 120
    while _journal_lines(out) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = _journal_lines(out)
    assert 5 <= killed < 40
    label(many_images, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    t = _timings(out)
    assert t["runs"] == 1 and t["total"]["images"] == t["this_run"]["images"] == 40 - killed
    assert t["total"]["seconds"] == t["this_run"]["seconds"]
