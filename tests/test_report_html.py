"""The HTML report: content, order and bounds of the gallery, escaping, robustness, and a real browser render."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import pipeline
from pipeline.formats.coco import load_instances as load_coco
from pipeline.report import size_bound, write_report_html
from pipeline.report.scan import flagged_key
from pipeline.report.thumbs import Neighbours, Shape, encode_jpeg, render
from pipeline.report.write import DatasetNotFoundError, ReportSettingsError
from pipeline.run.outputs import QUALITY_FIELDS
from tests.conftest import FakeDetector, FakeSegmenter, draw_scene, make_photos

CHROMIUM = Path("/usr/bin/chromium")
CARD = re.compile(r'<figure class="card (flagged|sample)" data-kind="\w+" data-rank="(\d+)">(.*?)</figure>', re.S)
THUMB = re.compile(r'<img class="thumb" src="data:image/jpeg;base64,[A-Za-z0-9+/=]+" width="(\d+)" height="(\d+)"')


def _label(tmp: Path, name: str, **settings) -> Path:
    photos = tmp / f"{name}-photos"
    if not photos.exists():
        make_photos(photos)
    out = tmp / name
    detector = FakeDetector(names=settings.pop("names", ("ball", "cube", "cone")))
    pipeline.label(photos, out, detector=detector, segmenter=FakeSegmenter(), progress=False, **settings)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A dataset as runs before the quality signals wrote it: no quality fields (6 images, 8 instances, 3 classes)."""
    out = _label(tmp_path_factory.mktemp("plain"), "ds")
    for path in out.glob("*/_annotations.coco.json"):
        coco = json.loads(path.read_text())
        for ann in coco["annotations"]:
            for key in (*QUALITY_FIELDS, "overlap_source_id"):
                ann.pop(key, None)
        path.write_text(json.dumps(coco))
    report = json.loads((out / "report.json").read_text())
    report.pop("quality")
    (out / "report.json").write_text(json.dumps(report))
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _add_quality(root: Path) -> list[dict]:
    """Give every annotation the quality fields, flags on some (by a fixed rule), and report.json a quality section.

    Returns the flagged annotations with their split and image file name.
    """
    rule = [("leaks_box", "tiny"), (), ("low_score",), ("fragmented",), (), ("duplicate", "unstable", "tiny")]
    flagged = []
    for path in sorted(root.glob("*/_annotations.coco.json")):
        split = path.parent.name
        coco = json.loads(path.read_text())
        files = {img["id"]: img["file_name"] for img in coco["images"]}
        for ann in coco["annotations"]:
            k = ann["id"] + (10 if split == "valid" else 0)
            flags = list(rule[k % len(rule)])
            ann.update(
                stability_score=round(0.7 + 0.03 * (k % 7), 3),
                box_fit=round(0.6 + 0.05 * (k % 5), 3),
                outside_box=0.01 * (k % 3),
                parts=1 + k % 2,
                largest_part=0.9,
                overlap=0.0,
                flags=flags,
            )
            if flags:
                flagged.append({**ann, "split": split, "file_name": files[ann["image_id"]]})
        path.write_text(json.dumps(coco))
    report = json.loads((root / "report.json").read_text())
    report["quality"] = {"flag_counts": {}, "per_class": {"ball": {"flagged": 1, "mean_box_fit": 0.8}}, "flagged": []}
    (root / "report.json").write_text(json.dumps(report))
    return flagged


def _cards(text: str) -> list[tuple[str, int, str]]:
    return [(kind, int(rank), body) for kind, rank, body in CARD.findall(text)]


def _check_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith(("data:image/jpeg;base64,", "data:image/svg+xml;base64,", "#")), ref
    assert "<script" not in text.lower() and "<link" not in text.lower()


def test_plain_dataset(plain, tmp_path):
    # No quality fields: every instance is in the sample, box_fit is computed from bbox vs det_bbox.
    root = _copy(plain, tmp_path)
    out = write_report_html(root)
    text = out.read_text(encoding="utf-8")
    assert out == root / "report.html"
    cards = _cards(text)
    assert [kind for kind, _, _ in cards] == ["sample"] * 8
    assert len(THUMB.findall(text)) == 8
    assert all(max(int(w), int(h)) <= 256 for w, h in THUMB.findall(text))
    assert text.count("data:image/svg+xml;base64,") == 2  # mask_score and box_fit (no stability_score)
    assert "computed here: IoU of the mask" in text
    assert "Sample: 8 of 8 unflagged shown (at most 24)" in text
    assert 'id="flagged"' not in text
    assert "Dropped instances: 6" in text and "<code>label</code>" in text
    _check_self_contained(text)
    assert out.stat().st_size <= size_bound()
    assert not list(root.glob(".report.html.*"))  # the temporary file was renamed


def test_same_dataset_same_bytes(plain, tmp_path):
    root = _copy(plain, tmp_path)
    first = write_report_html(root).read_bytes()
    assert write_report_html(root).read_bytes() == first


def test_flagged_first_then_sample(plain, tmp_path):
    # 5 of 8 instances flagged; 3 shown (most flags, then lowest mask_score), then 2 of the 3 unflagged.
    root = _copy(plain, tmp_path)
    flagged = _add_quality(root)
    assert len(flagged) == 5
    text = write_report_html(root, max_flagged=3, max_sample=2).read_text(encoding="utf-8")
    cards = _cards(text)
    assert [kind for kind, _, _ in cards] == ["flagged"] * 3 + ["sample"] * 2
    assert len(THUMB.findall(text)) == min(5, 3) + 2
    expected = sorted(flagged, key=lambda a: (-len(a["flags"]), a["mask_score"], a["split"], a["file_name"], a["id"]))
    for (_, _, body), ann in zip(cards[:3], expected[:3], strict=True):
        assert f"{ann['split']}/images/{ann['file_name']}" in body and f"annotation {ann['id']}" in body
        assert all(f">{f}</span>" in body for f in ann["flags"])
    assert "duplicate" in cards[0][2]  # the one with three flags leads
    assert "Flagged: 3 of 5 shown (at most 3)" in text
    assert "Sample: 2 of 3 unflagged shown (at most 2)" in text
    assert text.count("data:image/svg+xml;base64,") == 3  # stability_score drawn too
    assert "computed here" not in text  # box_fit came with the annotations
    counts = Counter(f for ann in flagged for f in ann["flags"])
    for flag, n in counts.items():
        assert f'<td><span class="flag">{flag}</span></td><td class="r">{n}</td>' in text
    assert "Per class (report.json)" in text and "mean_box_fit" in text
    assert 'class="tile warn"><div class="label">Flagged</div><div class="value">5</div>' in text


def test_flagged_key_orders_by_flags_then_score():
    from pipeline.report.scan import Item

    a = Item("train", "a.jpg", 1, 1, 0, 0, ("tiny",), {"mask_score": 0.2})
    b = Item("train", "b.jpg", 2, 2, 0, 0, ("tiny", "leaks_box"), {"mask_score": 0.9})
    c = Item("train", "c.jpg", 3, 3, 0, 0, ("tiny",), {"mask_score": 0.1})
    d = Item("valid", "a.jpg", 1, 1, 0, 0, ("tiny",), {})  # no score: after those with one
    assert sorted([a, b, c, d], key=flagged_key) == [b, c, a, d]


def test_class_names_and_file_names_escaped(tmp_path):
    evil = '<script>alert("x")</script>&co'
    root = _label(tmp_path, "evil", names=(evil, "a<b", "c\"d'"))
    text = write_report_html(root).read_text(encoding="utf-8")
    assert evil not in text and "<b" not in text.replace("<b>", "").replace("<body", "")
    assert html.escape(evil) in text
    _check_self_contained(text)


def test_missing_and_unreadable_images_give_placeholders(plain, tmp_path):
    root = _copy(plain, tmp_path)
    (root / "train" / "images" / "sub_a.jpg").unlink()
    (root / "valid" / "images" / "gray.png").write_bytes(b"not an image")
    text = write_report_html(root).read_text(encoding="utf-8")
    cards = _cards(text)
    assert len(cards) == 8
    missing = [body for _, _, body in cards if 'class="thumb missing"' in body]
    assert len(missing) == 2
    assert any("image not found: train/images/sub_a.jpg" in body for body in missing)
    assert any("image unreadable" in body for body in missing)
    assert len(THUMB.findall(text)) == 6


def test_rle_dataset(tmp_path):
    root = _label(tmp_path, "rle", coco_masks="rle")
    text = write_report_html(root, thumb_size=128).read_text(encoding="utf-8")
    sizes = THUMB.findall(text)
    assert len(sizes) == 8 and all(max(int(w), int(h)) == 128 for w, h in sizes)


def test_yolo_only_dataset(tmp_path):
    # No COCO files: the gallery is a sample of the YOLO polygons; no scores, so no histograms.
    root = _label(tmp_path, "yolo", formats="yolo")
    assert not list(root.glob("*/_annotations.coco.json"))
    text = write_report_html(root).read_text(encoding="utf-8")
    assert [kind for kind, _, _ in _cards(text)] == ["sample"] * 8
    assert len(THUMB.findall(text)) == 8
    assert "YOLO labels (no scores)" in text and "data:image/svg" not in text
    assert "label line 0" in text


def test_yolo_only_lists_report_flagged_as_text(tmp_path):
    # Flags live in report.json only: listed as text (thumbnails of flagged need the COCO files' per-instance data).
    root = _label(tmp_path, "yolo", formats="yolo")
    report = json.loads((root / "report.json").read_text())
    entry = {"image": "train/images/sub_b.JPG", "instance_id": 1, "class": "<cube>", "flags": ["tiny"], "box_fit": 0.4}
    report["quality"] = {"flag_counts": {"tiny": 1}, "per_class": {}, "flagged": [entry]}
    (root / "report.json").write_text(json.dumps(report))
    text = write_report_html(root).read_text(encoding="utf-8")
    assert "Flagged in report.json: 1" in text and "&lt;cube&gt;" in text and "<cube>" not in text
    assert "Flags (from report.json)" in text
    assert '<div class="label">Flagged</div><div class="value">1</div>' in text
    assert [kind for kind, _, _ in _cards(text)] == ["sample"] * 8


def test_malformed_annotations_give_placeholders(plain, tmp_path):
    # Junk an edited COCO file may hold: each bad annotation becomes a card saying why, nothing raises.
    root = _copy(plain, tmp_path)
    path = root / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    anns = coco["annotations"]
    anns[0]["segmentation"] = "junk"
    anns[1]["segmentation"] = {"size": [5, 5], "counts": "PP5"}  # RLE for another image size
    anns[2]["flags"] = "tiny"  # not a list: no flags
    anns[3]["id"] = "x"  # no usable id: identified by its place in the image
    anns.append({**anns[4], "id": 99, "image_id": [1]})  # unplaceable: counted in a note, not shown
    path.write_text(json.dumps(coco))
    text = write_report_html(root).read_text(encoding="utf-8")
    cards = _cards(text)
    assert len(cards) == 8
    assert sum("cannot draw this instance" in body for _, _, body in cards) == 2
    assert "an RLE of size 5x5 on an image of" in text
    assert "1 annotations without a known image or category" in text
    assert len(THUMB.findall(text)) == 6


def test_empty_dataset_without_report_json(tmp_path):
    photos = tmp_path / "dark"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(draw_scene(discs=())).save(photos / f"{i}.png")
    root = tmp_path / "empty"
    pipeline.label(photos, root, detector=FakeDetector(extra_tiny_box=False), segmenter=FakeSegmenter(), progress=False)
    (root / "report.json").unlink()
    text = write_report_html(root).read_text(encoding="utf-8")
    assert "No instances in this dataset." in text and "No report.json in this dataset." in text
    assert not _cards(text)
    _check_self_contained(text)


def test_unreadable_report_and_coco_are_noted(plain, tmp_path):
    root = _copy(plain, tmp_path)
    (root / "report.json").write_text("{not json")
    (root / "valid" / "_annotations.coco.json").write_text("[]")
    text = write_report_html(root).read_text(encoding="utf-8")
    assert "report.json could not be read" in text
    assert "valid/_annotations.coco.json could not be read" in text
    assert len(_cards(text)) == 8  # valid's instance read from its YOLO labels instead


def test_size_bound_holds_for_hostile_report(plain, tmp_path):
    # Thousands of long, markup-laden entries: the lists are cut, the text shortened, the bound holds.
    root = _copy(plain, tmp_path)
    report = json.loads((root / "report.json").read_text())
    junk = '<&"' * 2000
    report["skipped_images"] = [{"source": junk, "reason": junk} for _ in range(5000)]
    report["settings"] = {f"k{i}": junk for i in range(500)}
    (root / "report.json").write_text(json.dumps(report))
    out = write_report_html(root, max_flagged=0, max_sample=0)
    text = out.read_text(encoding="utf-8")
    assert "Skipped images: 5,000 (first 30 of 5,000; all in report.json)" in text
    assert not _cards(text)
    assert out.stat().st_size <= size_bound(max_flagged=0, max_sample=0)


def test_thumbnail_is_bounded():
    rgb = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)  # noise: the worst for JPEG
    poly = [[100.0, 100.0, 700.0, 100.0, 700.0, 500.0, 100.0, 500.0]]
    shape = Shape(class_id=1, segmentation=poly, extent_xyxy=(100, 100, 700, 500), prompt_xyxy=(90, 95, 710, 520))
    bgr = render(rgb, shape, Neighbours([shape]), thumb_size=256)
    assert max(bgr.shape[:2]) == 256
    jpeg, (w, h) = encode_jpeg(bgr, max_bytes=20_000)
    assert len(jpeg) <= 20_000 and max(w, h) <= 256


def test_bad_arguments(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        write_report_html(tmp_path / "nope")
    with pytest.raises(ReportSettingsError, match="thumb_size must be an integer from 64 to 1024, got 10"):
        write_report_html(tmp_path, thumb_size=10)
    with pytest.raises(ReportSettingsError, match="max_flagged"):
        write_report_html(tmp_path, max_flagged=-1)


def test_coco_files_untouched(plain, tmp_path):
    root = _copy(plain, tmp_path)
    before = load_coco(root / "train" / "_annotations.coco.json")
    write_report_html(root)
    assert load_coco(root / "train" / "_annotations.coco.json") == before


def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (Playwright's own browser download cannot work here)")
    return sync_api


@pytest.mark.browser
def test_renders_in_chromium(plain, tmp_path):
    sync_api = _browser()
    root = _copy(plain, tmp_path)
    _add_quality(root)
    (root / "train" / "images" / "sub_a.jpg").unlink()  # a placeholder card must render too
    out = write_report_html(root)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else errors.append(r.url))
            page.goto(out.as_uri(), wait_until="load")
            assert errors == []
            assert page.title() == f"samlabel report: {root}"
            assert page.locator("h1").inner_text() == "samlabel report"
            assert page.locator("#summary").is_visible()
            assert page.locator("#dataset-path").inner_text() == str(root)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) == 3 + 7 and all(w > 0 for w in widths)  # 3 histograms, 7 thumbnails
            assert page.locator(".thumb.missing").count() == 1
            page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "shot.png").stat().st_size > 0


def _supervision_thumbnail(rgb, focus, others, thumb_size):
    """The thumbnail as supervision's annotators drew it before OpenCV took over (the same crop and masks)."""
    import supervision as sv

    from pipeline.report import thumbs

    hw = rgb.shape[:2]
    window = thumbs.crop_window(focus, hw)
    x0, y0, x1, y1 = window
    scale = thumb_size / max(x1 - x0, y1 - y0)
    out_wh = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scene = cv2.cvtColor(cv2.resize(rgb[y0:y1, x0:x1], out_wh, interpolation=interpolation), cv2.COLOR_RGB2BGR)
    palette = sv.ColorPalette.DEFAULT

    def detections(shapes):
        return sv.Detections(
            xyxy=thumbs._to_window([s.extent_xyxy for s in shapes], window, out_wh),
            mask=np.stack([thumbs._window_mask(s.segmentation, hw, window, out_wh) for s in shapes]),
            class_id=np.array([s.class_id % len(palette.colors) for s in shapes]),
        )

    near = others.near(window, exclude=focus)
    if near:
        scene = sv.MaskAnnotator(color=palette, opacity=0.25).annotate(scene, detections(near))
    det = detections([focus])
    scene = sv.MaskAnnotator(color=palette, opacity=0.45).annotate(scene, det)
    scene = sv.PolygonAnnotator(color=palette, thickness=2).annotate(scene, det)
    if focus.prompt_xyxy is not None:
        prompt = sv.Detections(xyxy=thumbs._to_window([focus.prompt_xyxy], window, out_wh), class_id=np.array([0]))
        scene = sv.BoxAnnotator(color=sv.Color.BLACK, thickness=3).annotate(scene, prompt)
        scene = sv.BoxAnnotator(color=sv.Color.WHITE, thickness=1).annotate(scene, prompt)
    return scene


def _ring(cx: float, cy: float, r: float, n: int = 24) -> list[float]:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1).reshape(-1).tolist()


@pytest.mark.parametrize("thumb_size", [64, 256, 512])
def test_thumbnails_look_as_supervisions_annotators_drew_them(thumb_size):
    # Overlapping instances of several classes, one with a hole, one RLE without a prompt box: every thumbnail
    # is what supervision's MaskAnnotator / PolygonAnnotator / BoxAnnotator drew (at most 1 level apart).
    sv = pytest.importorskip("supervision")
    from pycocotools import mask as mask_utils

    from pipeline.report import thumbs

    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    shapes = []
    for k, (cx, cy, r) in enumerate([(200, 200, 80), (250, 220, 40), (300, 150, 60), (180, 260, 20), (500, 400, 30)]):
        seg = [_ring(cx, cy, r)] + ([_ring(cx, cy, r / 3)[::-1]] if k == 0 else [])
        box = (cx - r - 5.3, cy - r - 4.7, cx + r + 6.1, cy + r + 3.2)
        shapes.append(Shape(k, seg, (cx - r, cy - r, cx + r, cy + r), box))
    full = np.zeros((480, 640), dtype=np.uint8, order="F")
    full[100:300, 350:450] = 1
    full[150:200, 380:420] = 0
    rle = mask_utils.encode(full)
    shapes.append(Shape(3, {"size": rle["size"], "counts": rle["counts"].decode()}, (350, 100, 450, 300)))
    others = Neighbours(shapes)
    for shape in shapes:
        ours = render(rgb, shape, others, thumb_size=thumb_size).astype(np.int16)
        theirs = _supervision_thumbnail(rgb, shape, others, thumb_size)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1
    assert [thumbs.class_color(i) for i in range(30)] == [sv.ColorPalette.DEFAULT.by_idx(i).as_hex() for i in range(30)]


def test_report_step_imports_no_annotators_or_plotting():
    # Every run writes report.html at its end: importing the writer must not pull in supervision's annotators,
    # matplotlib or scipy (1.3 s together on a 2-core machine, for a page drawn in a fraction of that).
    code = (
        "import sys, pipeline.run.report, pipeline.report.write; "
        "print(sorted(m for m in ('supervision', 'matplotlib', 'scipy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_histogram_svg():
    import xml.etree.ElementTree as ET

    from pipeline.report.charts import CHART_PX, histogram_svg

    counts = np.zeros(50, dtype=int)
    counts[[3, 25, 49]] = [7, 80, 1]
    svg = histogram_svg(counts, xlabel='a<b & "c"', threshold=0.5)
    root = ET.fromstring(svg)  # well-formed: the label is escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert (root.get("width"), root.get("height")) == tuple(str(v) for v in CHART_PX)
    bars = root.findall(f"{ns}g/{ns}rect")
    assert len(bars) == 3  # one per non-empty bin
    heights = sorted(float(b.get("height")) for b in bars)
    assert heights[2] / heights[0] == pytest.approx(80, rel=0.01)
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert texts[:6] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert texts[6:-2] == ["0", "20", "40", "60", "80"]  # whole-number ticks up to the largest count
    assert texts[-2:] == ['a<b & "c"', "instances"]
    assert len(root.findall(f"{ns}line")) == 1  # the dashed threshold
    assert histogram_svg(np.zeros(50, dtype=int), xlabel="x") == histogram_svg(np.zeros(50, dtype=int), xlabel="x")
    with pytest.raises(ValueError, match="one or more counts of 0 or more"):
        histogram_svg(np.array([-1]), xlabel="x")


def test_flagged_tile_counts_the_annotations_flags_even_when_none_is_raised(tmp_path):
    # A run whose instances all passed the quality checks: every annotation carries "flags": []. The tile says
    # 0 flagged (not "no quality flags in the annotations"), and a report.json that disagrees does not count.
    root = _label(tmp_path, "clean")
    annotations = [a for p in root.glob("*/_annotations.coco.json") for a in load_coco(p)["annotations"]]
    assert len(annotations) == 8 and all(a["flags"] == [] for a in annotations)
    report = json.loads((root / "report.json").read_text())
    report["quality"]["flagged"] = [{"image": "train/images/sub_b.JPG", "class": "ball", "flags": ["tiny"]}]
    report["quality"]["flag_counts"] = {"tiny": 1}
    (root / "report.json").write_text(json.dumps(report))
    text = write_report_html(root).read_text(encoding="utf-8")
    assert '<div class="label">Flagged</div><div class="value">0</div><div class="hint">0.0% of 8</div>' in text
    assert "no quality flags in the annotations" not in text and "Flagged in report.json" not in text
    assert "No instance is flagged: the annotations carry quality flags, none raised." in text
    assert '<th class="r">flagged</th>' in text  # the class table's column, all 0
    # without the flags field (a dataset written before flags existed) the tile says so
    for path in root.glob("*/_annotations.coco.json"):
        coco = json.loads(path.read_text())
        for ann in coco["annotations"]:
            del ann["flags"]
        path.write_text(json.dumps(coco))
    report["quality"] = {}
    (root / "report.json").write_text(json.dumps(report))
    text = write_report_html(root).read_text(encoding="utf-8")
    assert '<div class="value">&ndash;</div><div class="hint">no quality flags in the annotations</div>' in text
