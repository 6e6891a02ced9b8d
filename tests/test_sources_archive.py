"""A dataset .zip: only what the dataset uses is extracted, streamed, and an archive that expands too far is refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from pipeline import convert
from pipeline.errors import SamlabelError
from pipeline.sources import archive
from pipeline.sources.archive import ExtractLimits, safe_extract
from tests.conftest import FakeSegmenter
from tests.roboflow import expected_counts, roboflow_coco, roboflow_yolo

ZEROS = 50 << 20  # 50 MB of zeros: about 50 kB deflated


def _zip(src: Path, archive_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive_path


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def small_limits(monkeypatch):
    """The default ratio, with 1 MB of slack instead of 8: a refused test archive writes at most ~6 MB."""
    monkeypatch.setattr(archive, "LIMITS", ExtractLimits(slack_bytes=1 << 20))


@pytest.mark.parametrize("make", [roboflow_coco, roboflow_yolo])
def test_an_unlabeled_entry_is_not_extracted_but_reported(tmp_path, make, small_limits):
    """A 50 MB image no label refers to costs nothing on disk; it is still reported as unlabeled."""
    folder = "train/" if make is roboflow_coco else "train/images/"
    zip_path = _zip(make(tmp_path / "src"), tmp_path / "export.zip", {f"{folder}huge.jpg": bytes(ZEROS)})
    assert zip_path.stat().st_size < 1 << 20
    out = tmp_path / "out"
    report = convert(zip_path, out, segmenter=FakeSegmenter(), progress=False).report
    assert "train/huge.jpg" in report["unlabeled_images"]
    assert sum(report["images"].values()) == sum(len(s) for s in expected_counts().values())
    [placeholder] = (out / ".samlabel" / "source").rglob("huge.jpg")
    assert placeholder.stat().st_size == 0
    assert _bytes_under(out) < 2 << 20


def test_keep_unlabeled_extracts_it_and_the_ratio_limit_refuses_it_naming_the_entry(tmp_path, small_limits):
    zip_path = _zip(roboflow_coco(tmp_path / "src"), tmp_path / "export.zip", {"train/huge.jpg": bytes(ZEROS)})
    out = tmp_path / "out"
    with pytest.raises(SamlabelError, match=r"^\S+export.zip: entry 'train/huge.jpg' expands past 100x") as e:
        convert(zip_path, out, segmenter=FakeSegmenter(), progress=False, keep_unlabeled=True)
    assert "\n" not in str(e.value)
    assert not out.exists()  # the partial extraction is gone, and the folder this call made


def test_a_labeled_bomb_is_refused(tmp_path, small_limits):
    """The COCO json refers to the 50 MB entry: it must be extracted, and the ratio limit stops it."""
    src = roboflow_coco(tmp_path / "src")
    coco_path = src / "train" / "_annotations.coco.json"
    coco = json.loads(coco_path.read_text())
    coco["images"].append({"id": 99, "file_name": "bomb.jpg", "height": 4000, "width": 4000})
    coco_path.write_text(json.dumps(coco))
    zip_path = _zip(src, tmp_path / "export.zip", {"train/bomb.jpg": bytes(ZEROS)})
    target = tmp_path / "x"
    with pytest.raises(SamlabelError, match="entry 'train/bomb.jpg' expands past 100x the compressed size"):
        safe_extract(zip_path, target)
    assert _bytes_under(target) == 0


def test_an_archive_larger_than_the_free_space_is_refused(tmp_path):
    zip_path = _zip(roboflow_yolo(tmp_path / "src"), tmp_path / "export.zip")
    with pytest.raises(SamlabelError, match=r"entry '[^']+' does not fit in the free disk space \(2000 bytes\)"):
        safe_extract(zip_path, tmp_path / "x", limits=ExtractLimits(free_bytes=2000))
    assert _bytes_under(tmp_path / "x") == 0


def test_only_metadata_and_referenced_images_are_written(tmp_path):
    src = roboflow_yolo(tmp_path / "src")
    (src / "README.dataset.md").write_text("not needed")
    zip_path = _zip(src, tmp_path / "export.zip", {"train/images/stray.jpg": b"\xff\xd8 not labeled"})
    root = safe_extract(zip_path, tmp_path / "x")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".complete")
    assert "README.dataset.md" not in names and "data.yaml" in names
    assert (root / "train" / "images" / "stray.jpg").stat().st_size == 0
    for p in (src / "train" / "images").iterdir():  # every labeled image, byte for byte
        assert (root / "train" / "images" / p.name).read_bytes() == p.read_bytes()
    assert safe_extract(zip_path, tmp_path / "x") == root  # a finished extraction is reused


def test_symlink_entries_are_still_refused(tmp_path):
    zip_path = tmp_path / "link.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        info = zipfile.ZipInfo("train/images/a.jpg")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SamlabelError, match="would land outside the target"):
        safe_extract(zip_path, tmp_path / "x")
    assert not (tmp_path / "x").exists() or _bytes_under(tmp_path / "x") == 0
