"""The review store without HTTP: recovery after a kill, later runs into a reviewed dataset, the lock, the CLI."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pipeline
from pipeline.cli import build_parser
from pipeline.errors import SamlabelError
from pipeline.review import server as review_server
from pipeline.review import store as review_store
from pipeline.review.sam import mask_logits
from pipeline.review.store import InstanceEdit, ReviewStore, image_id
from pipeline.run.state import Journal, locked
from pipeline.types import CropMask, ImageRecord
from tests.conftest import FakeDetector, FakeSegmenter
from tests.helpers import assert_valid, check_yolo_matches_coco
from tests.review_helpers import (
    ROOT,
    THRESHOLDS,
    TOKEN,
    TestClient,
    coco_image,
    copy_dataset,
    journal_lines,
    make_dataset,
)

IMAGE = "sub/b.JPG"  # 3 instances, all flagged


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("review-store"))


@pytest.fixture
def out(base, tmp_path):
    return copy_dataset(base, tmp_path / "copy")


def _recolour(store: ReviewStore, rel: str = IMAGE, cls: str = "cone") -> list[InstanceEdit]:
    """An edit of ``rel``: its first instance becomes ``cls``."""
    image = store.image(image_id(rel))
    return [InstanceEdit(i["id"], cls if k == 0 else i["class"], i["rle"]) for k, i in enumerate(image["instances"])]


class _Kill(BaseException):
    """Stands for SIGKILL: nothing after it runs (tests of the real signal: test_review_kill.py)."""


def test_record_reviewed_round_trip_and_old_records():
    rec = ImageRecord(rel="a.png", name="a.png", split="train", source="/x/a.png", hw=(4, 4), reviewed=True)
    back = ImageRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert back.reviewed is True and back.to_json() == rec.to_json()
    old = rec.to_json()
    del old["reviewed"]  # a record written before review existed
    assert ImageRecord.from_json(old).reviewed is False
    assert "reviewed" not in ImageRecord(rel="a", name="a", split="train", source="a", hw=(4, 4)).to_json()


def test_kill_after_the_journal_append_is_finished_on_open(out, monkeypatch):
    store = ReviewStore(out)
    iid = image_id(IMAGE)
    edits = _recolour(store)
    monkeypatch.setattr(ReviewStore, "_apply", lambda self, record, lines: (_ for _ in ()).throw(_Kill()))
    with pytest.raises(_Kill):
        store.save(iid, version=1, reviewed=True, instances=edits)
    monkeypatch.undo()
    assert (out / ".samlabel" / review_store.PENDING).exists()
    assert coco_image(out, "train", "sub_b.JPG")[1][0]["category_id"] == 1  # the files lag behind the journal
    reopened = ReviewStore(out)  # recovery: the journal is the commit point
    assert not (out / ".samlabel" / review_store.PENDING).exists()
    img, anns = coco_image(out, "train", "sub_b.JPG")
    assert anns[0]["category_id"] == 3 and anns[0]["source"] == "review" and img["reviewed"] is True
    assert (out / "train/labels/sub_b.txt").read_text().startswith("2 ")
    assert reopened.version(iid) == 2
    assert_valid(out)
    check_yolo_matches_coco(out)


def test_kill_before_the_journal_append_loses_only_that_edit(out, monkeypatch):
    store = ReviewStore(out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and ".samlabel" not in p.parts}
    real = review_store._write_synced

    def pending_then_kill(path, text):
        real(path, text)
        raise _Kill

    monkeypatch.setattr(review_store, "_write_synced", pending_then_kill)
    with pytest.raises(_Kill):
        store.save(image_id(IMAGE), version=1, reviewed=True, instances=_recolour(store))
    monkeypatch.undo()
    assert journal_lines(out) == 6
    reopened = ReviewStore(out)
    assert not (out / ".samlabel" / review_store.PENDING).exists()
    assert reopened.version(image_id(IMAGE)) == 1
    after = {p: p.read_bytes() for p in before}
    assert {p for p in before if before[p] != after[p]} <= {out / "report.json"}  # rewritten, same instances
    assert_valid(out)


def test_torn_journal_tail_and_unreadable_pending_are_handled(out):
    with open(out / ".samlabel" / "journal.jsonl", "ab") as f:
        f.write(b'{"rel": "sub/b.JPG", "name": "sub_b')  # a kill in the middle of an append
    (out / ".samlabel" / review_store.PENDING).write_text('{"rel": ')
    orphans = [out / "train" / "labels" / ".sub_b.txt.abc123.tmp", out / "train" / "._annotations.coco.json.x.tmp"]
    for orphan in orphans:  # a kill between an atomic write's temp file and its rename
        orphan.write_text("half")
    (out / "train" / "images" / "keep.tmp").write_text("not ours")
    store = ReviewStore(out)
    assert not any(o.exists() for o in orphans) and (out / "train" / "images" / "keep.tmp").exists()
    (out / "train" / "images" / "keep.tmp").unlink()
    assert not (out / ".samlabel" / review_store.PENDING).exists()
    assert (out / ".samlabel" / "journal.jsonl").read_bytes().endswith(b"\n")
    store.save(image_id(IMAGE), version=1, reviewed=True, instances=_recolour(store))
    assert [r.reviewed for _, r in Journal(out).records() if r.rel == IMAGE] == [False, True]
    assert_valid(out)


def test_review_refuses_an_unfinished_run(out):
    (out / "report.json").unlink()
    with pytest.raises(SamlabelError, match="has not finished.*run the same samlabel command again"):
        ReviewStore(out)
    with pytest.raises(SamlabelError, match="not a dataset written by samlabel"):
        ReviewStore(out / "train")


def test_later_label_resumes_keeps_reviews_and_overwrite_is_refused(out):
    store = ReviewStore(out)
    store.save(image_id(IMAGE), version=1, reviewed=True, instances=_recolour(store))
    photos = out.parent / "photos"
    kw = dict(detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, thresholds="min_box_fit=0.8")
    saved = {p: p.read_bytes() for p in sorted(out.glob("*/_annotations.coco.json"))}
    result = pipeline.label(photos, out, **kw)  # same inputs and settings: a resume, nothing to redo
    assert {p: p.read_bytes() for p in saved} == saved  # the run's own COCO writer gives the review's bytes
    assert result.report["reviewed_images"] == 1
    img, anns = coco_image(out, "train", "sub_b.JPG")
    assert img["reviewed"] is True and anns[0]["category_id"] == 3 and anns[0]["source"] == "review"
    assert_valid(out)
    with pytest.raises(SamlabelError, match=r"holds 1 image\(s\) reviewed .*--discard-reviews"):
        pipeline.label(photos, out, overwrite=True, **kw)
    with pytest.raises(SamlabelError, match="--discard-reviews"):  # other settings: the same refusal
        pipeline.label(photos, out, overwrite=True, **{**kw, "thresholds": ""})
    assert coco_image(out, "train", "sub_b.JPG")[0]["reviewed"] is True  # nothing was cleared
    pipeline.label(photos, out, overwrite=True, discard_reviews=True, **kw)
    assert "reviewed" not in coco_image(out, "train", "sub_b.JPG")[0]
    args = build_parser().parse_args(["convert", "src", "--out", "o", "--overwrite", "--discard-reviews"])
    assert args.discard_reviews and args.overwrite


@pytest.mark.parametrize("settings", [{"coco_masks": "rle"}, {"formats": "yolo"}, {"formats": "coco"}])
def test_saves_follow_the_datasets_settings_and_keep_its_report(tmp_path, settings):
    photos = tmp_path / "photos"
    make_dataset(tmp_path, **settings)  # writes the photos
    (photos / "broken.png").write_bytes(b"not a png")  # skipped by the run, listed in report.json
    out = tmp_path / "ds2"
    pipeline.label(photos, out, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False, **settings)
    skipped = json.loads((out / "report.json").read_text())["skipped_images"]
    assert len(skipped) == 1
    store = ReviewStore(out)
    store.save(image_id(IMAGE), version=1, reviewed=True, instances=_recolour(store))
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_images"] == skipped and report["reviewed_images"] == 1
    assert (out / "train/labels/sub_b.txt").exists() == ("yolo" in settings.get("formats", "yolo"))
    if settings.get("formats") != "yolo":
        img, anns = coco_image(out, "train", "sub_b.JPG")
        assert img["reviewed"] and anns[0]["category_id"] == 3
        rle = settings.get("coco_masks") == "rle"
        assert isinstance(anns[0]["segmentation"], dict) == rle
    else:
        assert (out / "train/labels/sub_b.txt").read_text().startswith("2 ")
    assert_valid(out)


class _Missing(FakeDetector):
    """``FakeDetector`` that does not find the third disc of sub/b.JPG (100 x 90); every other instance as before."""

    def __call__(self, rgb):
        found = super().__call__(rgb)
        return found[np.arange(len(found)) != 2] if rgb.shape[:2] == (100, 90) else found


@pytest.mark.parametrize("coco_masks", ["polygon", "rle"])
def test_a_review_save_writes_what_a_run_with_the_same_instances_writes(tmp_path, coco_masks):
    """Review saves go through the run's instance -> files step: deleting sub/b.JPG's third instance in
    review, and marking every other image reviewed unchanged, gives the label files (bytes) and COCO
    annotations of a run whose detector never found that instance."""
    reviewed = make_dataset(tmp_path, coco_masks=coco_masks)
    run = tmp_path / "run"
    pipeline.label(tmp_path / "photos", run, detector=_Missing(), segmenter=FakeSegmenter(), progress=False,
                   thresholds=THRESHOLDS, coco_masks=coco_masks)  # fmt: skip
    store = ReviewStore(reviewed)
    for rel in store._by_rel:
        image = store.image(image_id(rel))
        keep = [InstanceEdit(i["id"], i["class"], i["rle"]) for i in image["instances"]]
        if rel == IMAGE:
            assert [k.id for k in keep] == [0, 1, 2]
            keep = keep[:2]
        store.save(image_id(rel), version=image["version"], reviewed=True, instances=keep)
    labels = sorted(p.relative_to(run).as_posix() for p in run.rglob("labels/*.txt"))
    assert labels == sorted(p.relative_to(reviewed).as_posix() for p in reviewed.rglob("labels/*.txt"))
    assert "train/labels/sub_b.txt" in labels
    for rel in labels:
        assert (reviewed / rel).read_bytes() == (run / rel).read_bytes(), rel
    for split in ("train", "valid"):
        got = json.loads((reviewed / split / "_annotations.coco.json").read_text())["annotations"]
        want = json.loads((run / split / "_annotations.coco.json").read_text())["annotations"]
        assert got == want and got, split
    assert store.record(image_id(IMAGE)).dropped_reasons[-1] == review_store.DELETED  # kept in the journal


def test_coco_layout_dataset(tmp_path):
    out = make_dataset(tmp_path, layout="coco", formats="yolo,coco")
    store = ReviewStore(out)
    iid = image_id(IMAGE)
    assert store.image_path(iid) == out / "images" / "train" / "sub_b.JPG"
    store.save(iid, version=1, reviewed=True, instances=_recolour(store))
    coco = json.loads((out / "annotations" / "instances_train.json").read_text())
    [img] = [i for i in coco["images"] if i["file_name"] == "sub_b.JPG"]
    anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
    assert img["reviewed"] and anns[0]["category_id"] == 3 and anns[0]["source"] == "review"
    assert (out / "labels" / "train" / "sub_b.txt").read_text().startswith("2 ")
    assert not (out / "train").exists()
    assert_valid(out)


def test_server_and_runs_exclude_each_other(out, monkeypatch):
    with locked(out):  # what `samlabel review` holds while it serves
        with pytest.raises(SamlabelError, match="another samlabel run"):
            pipeline.label(
                out.parent / "photos",
                out,
                detector=FakeDetector(),
                segmenter=FakeSegmenter(),
                progress=False,
                thresholds="min_box_fit=0.8",
            )
        with pytest.raises(SamlabelError, match="another samlabel run"):
            review_server.serve(out, port=0, open_browser=False, sam=object())


def test_wide_host_warns(out, monkeypatch, caplog):
    import uvicorn

    real_bind = review_server._bind
    monkeypatch.setattr(review_server, "_bind", lambda host, port: real_bind("127.0.0.1", 0))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    urls = []
    with caplog.at_level(logging.WARNING, logger="pipeline.review.server"):
        review_server.serve(out, host="0.0.0.0", port=0, open_browser=False, sam=object(), on_ready=urls.append)
    assert "anyone on the network who has the token can view and edit" in caplog.text
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{40,}", urls[0])


def test_taken_port_is_one_line(out):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SamlabelError, match="--port 0"):
            review_server.serve(out, port=s.getsockname()[1], open_browser=False, sam=object())


def test_cli_prints_the_url_and_serves_without_sam(out, tmp_path):
    """``samlabel review DIR --port 0``: the printed URL works; SAM that cannot load leaves the rest usable."""
    code = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [str(out), "--port", "0", "--no-browser", "--segmenter", str(tmp_path / "missing_sam_b.pt")]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "review", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"review: (http://127\.0\.0\.1:(\d+))/\?token=([\w-]+)\n", line)
        assert match, line
        import httpx

        auth = {"authorization": f"Bearer {match.group(3)}"}
        assert httpx.get(match.group(1) + "/api/meta").status_code == 403
        deadline = time.time() + 60
        while (meta := httpx.get(match.group(1) + "/api/meta", headers=auth).json())["sam"] == "loading":
            assert time.time() < deadline
            time.sleep(0.2)
        assert meta["sam"] == "unavailable" and meta["counts"]["images"] == 6
        page = httpx.get(f"{match.group(1)}/?token={match.group(3)}", follow_redirects=False)
        assert page.status_code == 303 and f"samlabel_review_{match.group(2)}=" in page.headers["set-cookie"]
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read()


# ----------------------------------------------------------------------------------------- pure parts


def test_mask_logits_in_sams_letterboxed_frame():
    mask = CropMask(np.ones((50, 100), bool), 100, 0)  # the right half of the top of a 200 x 400 (H x W) image
    logits = mask_logits(mask, (200, 400))  # r = 256 / 400: the image is 128 x 256 in the frame
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    inside = logits > 0
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (0, 31, 64, 127)
    assert logits.min() == pytest.approx(-6.9, abs=0.01) and logits.max() == pytest.approx(6.9, abs=0.01)
    assert (mask_logits(CropMask(np.zeros((0, 0), bool)), (200, 400)) < 0).all()


def test_token_guard_needs_a_real_token(out):
    with pytest.raises(ValueError, match="16 characters"):
        review_server.create_app(ReviewStore(out), token="short")
    app = review_server.create_app(ReviewStore(out), token=TOKEN)
    assert TestClient(app).get("/api/meta", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
