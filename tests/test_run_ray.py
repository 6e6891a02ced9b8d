"""``--engine ray`` writes the dataset ``--engine local`` writes, survives a killed driver or worker, and says how
to install Ray when it is missing. One local Ray (2 CPUs) serves the whole module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import convert, label
from pipeline.errors import SamlabelError
from pipeline.run.state import Journal
from tests.conftest import FakeDetector, FakeSegmenter, draw_scene
from tests.helpers import assert_valid, coco_data, label_files_bytes, local_ray
from tests.roboflow import roboflow_yolo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
FAKES = dict(detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray for this module; its workers import ``tests.*`` (the pickled fake stages) from the repo."""
    pytest.importorskip("ray")
    with local_ray() as address:
        yield address


def _same_dataset(a: Path, b: Path) -> None:
    """Label files byte for byte, COCO equal, report equal but for timings and the settings of the engine."""
    assert label_files_bytes(a) == label_files_bytes(b)
    assert coco_data(a) == coco_data(b)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        del r["timings"], r["settings"]
    assert ra == rb
    assert_valid(b)


def _journal_rels(out: Path) -> list[str]:
    return [r.rel for _, r in Journal(out).records()]


def _photos(root: Path) -> Path:
    from tests.conftest import make_photos

    src = make_photos(root)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # a skipped record, reported the same way
    return src


def test_label_on_ray_equals_local(ray_address, tmp_path):
    src = _photos(tmp_path / "photos")
    label(src, tmp_path / "local", **FAKES)
    result = label(src, tmp_path / "ray", engine="ray", **FAKES)
    _same_dataset(tmp_path / "local", tmp_path / "ray")
    assert [s["source"] for s in result.report["skipped_images"]] == [str(src / "broken.jpg")]
    assert set(result.report["timings"]["this_run"]["stage_seconds"]) == {"read", "detect", "segment", "write"}
    assert sorted(_journal_rels(tmp_path / "ray")) == sorted(_journal_rels(tmp_path / "local"))


def test_convert_on_ray_equals_local(ray_address, tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    convert(src, tmp_path / "local", segmenter=FakeSegmenter(), progress=False)
    convert(src, tmp_path / "ray", segmenter=FakeSegmenter(), progress=False, engine="ray")
    _same_dataset(tmp_path / "local", tmp_path / "ray")


def test_real_models_built_on_the_workers_equal_local(ray_address, tmp_path):
    """Random-weight YOLOv8n and MobileSAM, built by each actor from the weights paths. The detector's
    confidences are near-tied (``exact=False``), so its boxes are the same only at the same thread count."""
    from tests.checkpoints import make_sam_checkpoint, make_yolo_checkpoint

    det = make_yolo_checkpoint(tmp_path / "w" / "det.pt", ["ball", "cube", "cone"], exact=False)
    sam = make_sam_checkpoint(tmp_path / "w" / "mobile_sam.pt")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 200, (120, 160, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    kw = dict(detector=str(det), segmenter=str(sam), max_det=3, runtime="torch", progress=False)
    label(src, tmp_path / "local", **kw)
    label(src, tmp_path / "ray", engine="ray", **kw)
    _same_dataset(tmp_path / "local", tmp_path / "ray")


DRIVER = """
import sys, time
sys.path.insert(0, {root!r})
from pipeline import label
from tests.conftest import FakeDetector, FakeSegmenter

class Slow(FakeSegmenter):
    def __call__(self, rgb, inst):
        time.sleep(0.15)
        return super().__call__(rgb, inst)

label({src!r}, {out!r}, detector=FakeDetector(), segmenter=Slow(), progress=False, engine="ray", ray_address={addr!r})
"""


@pytest.fixture
def many_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):
        discs = [(int(rng.integers(10, 70)), int(rng.integers(10, 50)), int(rng.integers(3, 9))) for _ in range(3)]
        Image.fromarray(draw_scene(hw=(64, 80), discs=discs)).save(src / f"img_{i:02d}.png")
    return src


def test_killed_driver_then_rerun_equals_a_clean_run(ray_address, many_images, tmp_path):
    label(many_images, tmp_path / "clean", **FAKES)
    out = tmp_path / "killed"
    code = DRIVER.format(root=str(ROOT), src=str(many_images), out=str(out), addr=ray_address)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = out / ".samlabel" / "journal.jsonl"
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:  # wait on the journal, not the clock
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(_journal_rels(out))
    assert 4 <= kept < 24
    label(many_images, out, engine="ray", **FAKES)
    _same_dataset(tmp_path / "clean", out)
    assert sorted(_journal_rels(out)) == sorted(p.name for p in many_images.iterdir())  # each image once


def test_a_local_run_resumes_on_ray_and_the_other_way_round(ray_address, many_images, tmp_path):
    label(many_images, tmp_path / "clean", **FAKES)
    out = tmp_path / "out"
    journal = out / ".samlabel" / "journal.jsonl"
    for first, then in (("local", "ray"), ("ray", "local")):
        label(many_images, out, engine=first, overwrite=True, **FAKES)
        lines = journal.read_text().splitlines(keepends=True)
        journal.write_text("".join(lines[:5]))  # killed after 5 images (the files of others may be there too)
        report = label(many_images, out, engine=then, **FAKES).report
        assert report["timings"]["this_run"]["images"] == 19
        _same_dataset(tmp_path / "clean", out)
        assert len(_journal_rels(out)) == len(set(_journal_rels(out))) == 24


class DieOnce(FakeSegmenter):
    """Kills its worker process on the first call of the run (the marker file says it happened); then segments."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)

    def __call__(self, rgb, instances):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(rgb, instances)


def test_killed_actor_loses_nothing(ray_address, tmp_path):
    src = _photos(tmp_path / "photos")
    label(src, tmp_path / "clean", **FAKES)
    marker = tmp_path / "died"
    label(src, tmp_path / "ray", detector=FakeDetector(), segmenter=DieOnce(marker), progress=False, engine="ray")
    assert marker.is_file()  # an actor did die mid-image
    _same_dataset(tmp_path / "clean", tmp_path / "ray")
    rels = _journal_rels(tmp_path / "ray")
    assert len(rels) == len(set(rels)) == 7


class DieOnB(FakeSegmenter):
    """Kills its worker on every call for one image (sub/b.JPG, the only 100x90 one), as a poison image would."""

    def __call__(self, rgb, instances):
        if rgb.shape[:2] == (100, 90):
            os._exit(1)
        return super().__call__(rgb, instances)


def test_an_image_that_kills_every_worker_is_reported_and_retried_by_the_next_run(ray_address, tmp_path):
    src = _photos(tmp_path / "photos")
    label(src, tmp_path / "clean", **FAKES)
    out = tmp_path / "ray"
    with pytest.raises(SamlabelError, match=r"^1 image\(s\) not finished \(.*b\.JPG: a Ray worker died on it"):
        label(src, out, detector=FakeDetector(), segmenter=DieOnB(), progress=False, engine="ray")
    report = json.loads((out / "report.json").read_text())
    assert [u["source"] for u in report["unfinished_images"]] == [str(src / "sub" / "b.JPG")]
    assert sorted(_journal_rels(out)) == sorted(r for r in _journal_rels(tmp_path / "clean") if r != "sub/b.JPG")
    label(src, out, engine="ray", **FAKES)  # the next run does the image the first could not
    _same_dataset(tmp_path / "clean", out)
    assert "unfinished_images" not in json.loads((out / "report.json").read_text())


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # import ray.data -> ImportError
    src = _photos(tmp_path / "photos")
    with pytest.raises(SamlabelError, match=r'^--engine ray needs Ray Data.*pip install "samlabel\[ray\]"$') as e:
        label(src, tmp_path / "out", engine="ray", **FAKES)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before any work
