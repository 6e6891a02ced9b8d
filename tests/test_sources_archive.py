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


# --------------------------------------------------------------------------- headers that lie, entries that overlap


def _central_records(data: bytes) -> list[int]:
    """Offsets of the central directory records of a zip written by ``zipfile`` (no comment, no zip64)."""
    found, at = [], data.find(b"PK\x01\x02")
    while at != -1:
        found.append(at)
        at = data.find(b"PK\x01\x02", at + 46)
    return found


def _claim_compressed_size(path: Path, name: str, size: int) -> None:
    """Rewrite the compressed size the central directory gives ``name`` (its real data stays as it was)."""
    data = bytearray(path.read_bytes())
    for at in _central_records(bytes(data)):
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + n] == name.encode():
            data[at + 20 : at + 24] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _duplicate_first_entry(path: Path) -> None:
    """Add a second central directory record for the first entry: two entries over one local header."""
    data = bytes(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    first = _central_records(data)[0]
    n, m, k = (int.from_bytes(data[first + o : first + o + 2], "little") for o in (28, 30, 32))
    record = data[first : first + 46 + n + m + k]
    tail = bytearray(data[eocd:])
    count = int.from_bytes(tail[10:12], "little") + 1
    tail[8:10] = tail[10:12] = count.to_bytes(2, "little")
    tail[12:16] = (int.from_bytes(tail[12:16], "little") + len(record)).to_bytes(4, "little")
    path.write_bytes(data[:eocd] + record + bytes(tail))


def test_a_compressed_size_that_lies_does_not_widen_the_budget(tmp_path):
    """The central directory claims 1 MB for 2 kB of deflated zeros: a 100x budget of the claim would allow
    100 MB. The claim overlaps the next entry; refused before a byte is written, naming the entry."""
    path = tmp_path / "lying.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.json", b"0" * (4 << 20))
        zf.writestr("data.yaml", b"names: [a]\n")
    _claim_compressed_size(path, "big.json", 1 << 20)
    limits = ExtractLimits(max_ratio=100, slack_bytes=0, free_bytes=1 << 30)
    with pytest.raises(SamlabelError, match=r"entry 'big.json' claims 1048576 compressed bytes but only \d+ lie"):
        safe_extract(path, tmp_path / "x", limits=limits)
    assert _bytes_under(tmp_path / "x") == 0


def test_overlapping_entries_are_refused(tmp_path):
    """Two entries over one local header (the zip bomb by overlap): refused before anything is written."""
    path = tmp_path / "overlap.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.json", b"{}" * 1000)
        zf.writestr("data.yaml", b"names: [a]\n")
    _duplicate_first_entry(path)
    assert [i.filename for i in zipfile.ZipFile(path).infolist()] == ["a.json", "data.yaml", "a.json"]
    with pytest.raises(SamlabelError, match=r"entry 'a.json' claims \d+ compressed bytes but only 0 lie before"):
        safe_extract(path, tmp_path / "x")
    assert _bytes_under(tmp_path / "x") == 0


def test_an_entry_whose_data_ends_early_is_named_with_a_reason(tmp_path):
    """A stored last entry that claims more bytes than the file holds: once '... cannot be extracted ()'."""
    path = tmp_path / "short.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("data.yaml", b"names: [a]\n")
        zf.writestr("list.txt", b"x" * 100)
    _claim_compressed_size(path, "list.txt", 100_000)
    with pytest.raises(SamlabelError) as e:
        safe_extract(path, tmp_path / "x")
    message = str(e.value)
    assert "entry 'list.txt'" in message and "()" not in message and "\n" not in message
