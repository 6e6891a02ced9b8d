"""Whatever a real image folder holds: reported, never fatal, never costly to the rest of the run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import convert, label
from pipeline.errors import SamlabelError
from tests.conftest import FakeDetector, FakeSegmenter, draw_scene
from tests.helpers import assert_valid, coco_by_image


def _run(src, out, **kw):
    result = label(src, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, split="train=1", **kw)
    assert_valid(out)
    return result.report


def test_a_folder_of_everything(tmp_path):
    src = tmp_path / "src"
    (src / "dir with space").mkdir(parents=True)
    (src / "b").mkdir()
    scene = draw_scene(hw=(60, 80), discs=((40, 30, 10),))
    Image.fromarray(scene).save(src / "dir with space" / "naïve café.png")
    Image.fromarray(scene).save(src / "x.jpg", quality=100)
    Image.fromarray(scene).save(src / "x.png")
    Image.fromarray(scene).save(src / "b" / "x.png")
    Image.fromarray(scene).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(scene[..., 0].astype(np.uint16) * 257).save(src / "sixteen.png")
    Image.fromarray(scene).quantize(16).save(src / "palette.png")
    Image.fromarray(np.dstack([scene, np.full(scene.shape[:2], 128, np.uint8)])).save(src / "rgba.png")
    Image.fromarray(scene[..., 0]).save(src / "gray.png")
    Image.fromarray(draw_scene(hw=(8, 8), discs=((4, 4, 2),))).save(src / "tiny.png")
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.png").write_text("I am not a PNG")
    (src / "trunc.jpg").write_bytes((src / "x.jpg").read_bytes()[:200])
    report = _run(src, tmp_path / "out")
    assert sorted(s["source"].rsplit("/", 1)[1] for s in report["skipped_images"]) == [
        "text.png",
        "tiny.png",  # 8 x 8: Ultralytics would drop it, and its labels, when training
        "trunc.jpg",
        "zero.jpg",
    ]
    assert report["images"] == {"train": 9}
    anns = coco_by_image(tmp_path / "out", "train")
    assert "dir with space_naïve café.png" in anns
    # every readable image, whatever its mode, gets its disc found and segmented
    for name, a in anns.items():
        assert len(a) == 1, name


def test_exif_rotated_photo_labels_the_upright_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    stored = draw_scene(hw=(60, 100), discs=((15, 15, 8),))  # disc near the top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(stored).save(src / "rot.jpg", exif=exif.tobytes(), quality=100)
    _run(src, tmp_path / "out")
    exported = Image.open(tmp_path / "out" / "train" / "images" / "rot.jpg")
    assert exported.size == (60, 100) and exported.getexif().get(0x0112, 1) == 1
    [ann] = coco_by_image(tmp_path / "out", "train")["rot.jpg"]
    x, y, w, h = ann["bbox"]
    assert x + w / 2 > 30 and y + h / 2 < 30  # the disc is now at the top-right of the upright image


def test_large_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = draw_scene(hw=(4000, 6000), discs=((3000, 2000, 1500), (500, 500, 100)))
    Image.fromarray(big).save(src / "big.png", compress_level=1)
    report = _run(src, tmp_path / "out")
    anns = coco_by_image(tmp_path / "out", "train")["big.png"]
    assert len(anns) == 2 and report["instances_total"] == 2
    assert max(a["area"] for a in anns) == pytest.approx(np.pi * 1500**2, rel=0.01)


def test_output_folder_that_cannot_be_written_is_refused_before_work(tmp_path, image_folder):
    blocker = tmp_path / "file"
    blocker.write_text("")
    calls = []

    class Recording(FakeDetector):
        def __call__(self, rgb):
            calls.append(1)
            return super().__call__(rgb)

    with pytest.raises(SamlabelError, match="cannot be written"):
        label(image_folder, blocker / "out", detector=Recording(), segmenter=FakeSegmenter(), progress=False)
    assert calls == []


def test_nothing_written_outside_the_output_folder(tmp_path, image_folder):
    before = {p for p in tmp_path.rglob("*")}
    _run(image_folder, tmp_path / "out")
    after = {p for p in tmp_path.rglob("*")}
    assert all(tmp_path / "out" in p.parents or p == tmp_path / "out" for p in after - before)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["images"] == {"train": 6}


def _refused_runs():
    from tests.roboflow import roboflow_yolo

    def bad_zip(tmp_path):
        (tmp_path / "export.zip").write_text("not a zip")
        return tmp_path / "export.zip"

    return {
        "label: missing weights": lambda t, imgs: label(imgs, t / "a" / "b" / "out", detector="nowhere/best.pt"),
        "label: bad source": lambda t, imgs: label(t / "nowhere", t / "a" / "b" / "out", detector=FakeDetector()),
        "label: bad settings": lambda t, imgs: label(imgs, t / "a" / "b" / "out", split="train=0"),
        "convert: bad source": lambda t, imgs: convert(t / "nowhere", t / "a" / "b" / "out"),
        "convert: not a zip": lambda t, imgs: convert(bad_zip(t), t / "a" / "b" / "out"),
        "convert: missing weights": lambda t, imgs: convert(
            roboflow_yolo(t / "src"), t / "a" / "b" / "out", segmenter="nowhere/mobile_sam.pt"
        ),
    }


@pytest.mark.parametrize("case", list(_refused_runs()))
def test_a_refused_run_leaves_no_output_folder(tmp_path, image_folder, case):
    with pytest.raises(SamlabelError):
        _refused_runs()[case](tmp_path, image_folder)
    assert not (tmp_path / "a").exists()


def _bad_images(src, n_text=2):
    """Two good images and four that cannot be used, plus a name that is not UTF-8; returns the bad paths."""
    src.mkdir(parents=True)
    scene = draw_scene(hw=(60, 80), discs=((40, 30, 10),))
    Image.fromarray(scene).save(src / "good1.png")
    Image.fromarray(scene).save(src / "good2.png")
    bad = []
    for i in range(n_text):
        (src / f"text{i}.jpg").write_text("not a JPEG")  # an image suffix, not an image
        bad.append(str(src / f"text{i}.jpg"))
    (src / "trunc.png").write_bytes((src / "good1.png").read_bytes()[:100])
    Image.fromarray(draw_scene(hw=(5, 5), discs=())).save(src / "tiny.png")
    bad += [str(src / "trunc.png"), str(src / "tiny.png")]
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1 bytes: not a UTF-8 name
    with open(raw, "wb") as f:
        f.write((src / "good1.png").read_bytes())
    return bad + [str(src) + "/caf\\xe9.png"]


def _skip_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]


def test_every_skipped_image_is_named_once_on_the_console_and_in_the_report(tmp_path, caplog):
    src = tmp_path / "src"
    bad = _bad_images(src)
    notes = tmp_path / "notes.txt"  # named explicitly: not an image suffix
    notes.write_text("x")
    bad.append(str(notes))
    with caplog.at_level("INFO", logger="pipeline"):
        report = _run([src, notes], tmp_path / "out")
    assert sorted(s["source"] for s in report["skipped_images"]) == sorted(bad)
    lines = _skip_lines(caplog)
    assert sorted(line.split(": ")[0] for line in lines) == sorted(f"skipped {b}" for b in bad)
    assert [s["reason"] for s in report["skipped_images"]] == [line[len("skipped ") :] for line in lines]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"found 7 image files in {src}") for m in messages)  # by suffix: 2 good, 5 not
    assert any(": 2 images written {'train': 2}" in m and "6 images skipped" in m for m in messages)
    # run again (as after a kill, or on a finished dataset): the same lines, also for what an earlier run skipped
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        _run([src, notes], tmp_path / "out")
    assert _skip_lines(caplog) == lines


def test_many_skipped_images_are_counted_in_one_line(tmp_path, caplog):
    src = tmp_path / "src"
    _bad_images(src, n_text=20)
    with caplog.at_level("INFO", logger="pipeline"):
        report = _run(src, tmp_path / "out")
    assert len(report["skipped_images"]) == 23
    assert _skip_lines(caplog) == [
        f"skipped 23 images; each with its reason in {tmp_path / 'out' / 'report.json'} (skipped_images)"
    ]
