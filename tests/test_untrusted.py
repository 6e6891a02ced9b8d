"""A dataset is untrusted input: what its journal, state.json and data.yaml name never reaches outside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import SamlabelError
from pipeline.review.server import create_app
from pipeline.review.store import ReviewStore
from pipeline.run.state import JournalDamaged
from pipeline.safepath import UnsafePathError
from pipeline.types import ImageRecord
from tests.review_helpers import TOKEN, FakeSamSession, TestClient, copy_dataset, make_dataset, wait_until

AUTH = {"authorization": f"Bearer {TOKEN}"}
SECRET = b"\x89PNG not an image of the dataset: a secret outside it"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("untrusted"), split="train=1")


@pytest.fixture
def out(base, tmp_path):
    return copy_dataset(base, tmp_path / "copy")


def _records(out: Path) -> list[dict]:
    lines = (out / ".samlabel" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _append(out: Path, *records: dict) -> None:
    with open(out / ".samlabel" / "journal.jsonl", "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- journal


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("split", "../outside", "is not one of the split names"),
        ("split", "train/../../x", "is not one of the split names"),
        ("split", "val", "is not one of the split names"),  # samlabel writes 'valid'
        ("name", "../../etc/hostname", "is not a plain file name"),
        ("name", "/etc/hostname", "is not a plain file name"),
        ("name", "sub/a.jpg", "is not a plain file name"),
        ("name", "..", "is not a plain file name"),
        ("name", "", "is not a plain file name"),
        ("name", "a\0.jpg", "is not a plain file name"),
        ("name", 7, "is not a plain file name"),
    ],
)
def test_a_record_with_a_path_in_its_split_or_name_is_refused_when_read(out, field, value, match):
    record = next(r for r in _records(out) if r["status"] == "ok")
    with pytest.raises(UnsafePathError, match=match):
        ImageRecord.from_json({**record, field: value})
    assert ImageRecord.from_json(record).name == record["name"]  # the untouched record reads


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("name", "CLIMB", "is not a plain file name"), ("split", "../../escape", "is not one of the split names")],
)
def test_review_refuses_a_journal_that_points_outside(out, tmp_path, field, value, match):
    """A hostile newest record of an image points its name at a file outside, or its split at a folder
    outside: review refuses the dataset in one message naming the line, and reads or writes nothing outside."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(SECRET)
    first = next(r for r in _records(out) if r["status"] == "ok")
    if value == "CLIMB":
        value = os.path.relpath(secret, out / "train" / "images")  # ../../../secret.png
    _append(out, {**first, field: value})
    before = _files(tmp_path)
    with pytest.raises(JournalDamaged, match=rf"line \d+ \(byte \d+\) names a path samlabel will not build: .*{match}"):
        ReviewStore(out)
    assert main(["review", str(out), "--no-browser", "--port", "0"]) == 2
    after = _files(tmp_path)
    outside = {k for k in {*before, *after} if not k.startswith("copy/ds/")}
    assert {k: after.get(k) for k in outside} == {k: before.get(k) for k in outside}  # nothing outside changed
    assert not (tmp_path / "copy" / "escape").exists() and not (tmp_path / "escape").exists()


def test_a_symlinked_folder_does_not_lead_the_review_outside(out, tmp_path):
    """``train/images`` replaced by a link to a folder outside: the image is not served from there."""
    elsewhere = tmp_path / "elsewhere"
    (out / "train" / "images").rename(elsewhere)
    (out / "train" / "images").symlink_to(elsewhere, target_is_directory=True)
    client = TestClient(create_app(ReviewStore(out), token=TOKEN, sam=FakeSamSession()), headers=AUTH)
    row = client.get("/api/images").json()[0]
    got = client.get(f"/api/images/{row['id']}/image")
    assert got.status_code == 400 and "leads outside" in got.json()["detail"]


def test_an_image_link_to_a_file_that_is_no_image_is_not_served(out, tmp_path):
    """An image *file* may be a link (``--link`` datasets link to their sources), so a hostile dataset can ship
    ``x.png -> some private file``: review serves only files whose header is an image's."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    store = ReviewStore(out)
    client = TestClient(create_app(store, token=TOKEN, sam=FakeSamSession()), headers=AUTH)
    row = client.get("/api/images").json()[0]
    path = store.image_path(row["id"])
    assert client.get(f"/api/images/{row['id']}/image").content == path.read_bytes()  # a real image is served
    path.unlink()
    path.symlink_to(secret)
    got = client.get(f"/api/images/{row['id']}/image")
    assert got.status_code == 400 and "is not an image file" in got.json()["detail"]
    assert SECRET not in got.content


def test_the_report_reads_no_image_through_a_folder_that_leads_outside(out, tmp_path):
    from pipeline.report import write_report_html

    elsewhere = tmp_path / "elsewhere"
    (out / "train" / "images").rename(elsewhere)
    (out / "train" / "images").symlink_to(elsewhere, target_is_directory=True)
    html = write_report_html(out).read_text(encoding="utf-8")
    assert "leads outside" in html and "not read" in html


def test_a_resumed_run_writes_nothing_outside(base, out, tmp_path):
    """The same label command again (a resume) over a journal whose record names a split outside: refused in
    one message, nothing written outside."""
    first = next(r for r in _records(out) if r["status"] == "ok")
    _append(out, {**first, "split": "../../escape"})
    before = _files(tmp_path)
    with pytest.raises(JournalDamaged, match="is not one of the split names"):
        make_dataset(tmp_path / "copy", split="train=1")  # the label command that wrote it, resumed
    after = _files(tmp_path)
    outside = {k for k in {*before, *after} if not k.startswith("copy/ds/")}
    assert {k: after.get(k) for k in outside} == {k: before.get(k) for k in outside}
    assert not (tmp_path / "escape").exists() and not (tmp_path / "copy" / "escape").exists()


# ------------------------------------------------------------------------------------------ state.json's SAM


class _RunsCode:
    """Pickles as a call to ``open(path, "w")``: unpickling it creates ``path`` (a stand-in for any code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _point_segmenter_at(out: Path, weights: Path) -> None:
    path = out / ".samlabel" / "state.json"
    state = json.loads(path.read_text())
    state["settings"]["segmenter"] = str(weights)
    path.write_text(json.dumps(state))


def test_review_does_not_unpickle_the_segmenter_a_dataset_names(out, tmp_path):
    import torch

    from pipeline.review.server import sam_loader

    ran = tmp_path / "code-ran"
    evil = tmp_path / "evil_mobile_sam.pt"  # the name says mobile_sam: it passes the architecture check
    torch.save({"model": _RunsCode(ran)}, evil)
    _point_segmenter_at(out, evil)
    store = ReviewStore(out)
    client = TestClient(create_app(store, token=TOKEN, sam_loader=sam_loader(store.settings)), headers=AUTH)
    assert wait_until(lambda: client.get("/api/meta").json()["sam"] == "unavailable")
    error = client.get("/api/meta").json()["sam_error"]
    assert "the dataset's segmenter (from its .samlabel/state.json) cannot be used" in error
    assert "holds Python objects besides tensors" in error and "Pass --segmenter" in error
    assert not ran.exists()
    # named on the command line it is the user's file: still read as weights only, never run
    with pytest.raises(SamlabelError, match=r"holds Python objects besides tensors \(it refers to io.open\)"):
        sam_loader(store.settings, segmenter=str(evil))()
    assert not ran.exists()


def test_review_loads_the_plain_state_dict_a_dataset_names(out, plain_mobile_sam):
    from pipeline.review.server import sam_loader

    _point_segmenter_at(out, plain_mobile_sam)
    session = sam_loader(ReviewStore(out).settings, runtime="torch")()
    assert session.segmenter.arch == "mobile_sam"


# ------------------------------------------------------------------------------------------------ data.yaml


def _pointing_outside(tmp_path: Path, entry: str) -> tuple[Path, Path]:
    """A Roboflow YOLO dataset whose data.yaml takes train from another dataset, outside its folder."""
    from tests.roboflow import roboflow_yolo

    outside, ds = roboflow_yolo(tmp_path / "outside"), roboflow_yolo(tmp_path / "ds")
    entry = entry.format(outside=outside)
    text = (ds / "data.yaml").read_text().replace("train: ../train/images", f"train: {entry}")
    (ds / "data.yaml").write_text(text)
    return ds, outside


def _images_written(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.glob("*/images/*"))


@pytest.mark.parametrize("entry", ["{outside}/train/images", "../outside/train/images", "../../outside/train/images"])
def test_a_dataset_data_yaml_that_points_outside_is_refused(tmp_path, entry):
    from pipeline import convert
    from tests.conftest import FakeSegmenter

    ds, _outside = _pointing_outside(tmp_path, entry)
    out = tmp_path / "out"
    report = convert(ds, out, segmenter=FakeSegmenter(), progress=False).report
    assert _images_written(out) == ["test/images/e_jpg.rf.5.jpg", "valid/images/d_jpg.rf.4.jpg"]  # no train
    [refused] = [p for p in report["source_problems"] if p["where"] == "data.yaml: train"]
    assert "leads outside the dataset folder" in refused["problem"] and refused["action"].startswith("split refused")


def test_a_data_yaml_in_an_archive_is_confined_to_it(tmp_path):
    import zipfile

    from pipeline import convert
    from tests.conftest import FakeSegmenter

    ds, outside = _pointing_outside(tmp_path, "{outside}/train/images")
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(ds.rglob("*")):
            zf.write(p, p.relative_to(ds).as_posix())
    out = tmp_path / "out"
    report = convert(archive, out, segmenter=FakeSegmenter(), progress=False).report
    assert not any("train/" in name for name in _images_written(out))
    assert any("leads outside the dataset folder" in p["problem"] for p in report["source_problems"])


def test_a_data_yaml_the_user_names_may_point_elsewhere(tmp_path):
    from pipeline import convert
    from tests.conftest import FakeSegmenter

    ds, _outside = _pointing_outside(tmp_path, "{outside}/train/images")
    out = tmp_path / "out"
    convert(ds / "data.yaml", out, segmenter=FakeSegmenter(), progress=False)
    assert [n for n in _images_written(out) if n.startswith("train/")] == [
        "train/images/a_jpg.rf.1.jpg",
        "train/images/b_jpg.rf.2.jpg",
        "train/images/c_jpg.rf.3.jpg",
    ]
