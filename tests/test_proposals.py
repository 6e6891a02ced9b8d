"""Proposals (``--propose``): what the detector missed, kept per image, counted, and accepted or dismissed in review."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import label
from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.errors import SamlabelError
from pipeline.proposals import MOSTLY_INSIDE, select_proposals
from pipeline.review.server import create_app
from pipeline.review.store import ReviewError, ReviewStore
from pipeline.run.state import Journal, JournalDamaged
from pipeline.types import CropMask, ImageRecord, Instances
from tests.conftest import FakeDetector, FakeSegmenter
from tests.helpers import assert_valid, check_yolo_matches_coco, coco_by_image
from tests.proposal_helpers import FakeGenerator, MissingDetector, make_three_disc_images
from tests.review_helpers import TOKEN, FakeSamSession, TestClient

AUTH = {"authorization": f"Bearer {TOKEN}"}
HW = (20, 20)


def _mask(x0: int, y0: int, x1: int, y1: int) -> CropMask:
    """A filled rectangle [x0, x1) x [y0, y1) in a 20 x 20 image."""
    full = np.zeros(HW, dtype=bool)
    full[y0:y1, x0:x1] = True
    return CropMask.from_full(full)


def _instances(*masks: CropMask | None) -> Instances:
    n = len(masks)
    boxes = [m.xyxy if m is not None else (0, 0, 1, 1) for m in masks]
    return Instances(xyxy=np.array(boxes, dtype=float).reshape(-1, 4), class_id=np.zeros(n), masks=masks)


# ----------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("generated", "instance", "proposal"),
    [
        ((0, 0, 4, 4), (10, 10, 14, 14), True),  # apart: a proposal
        ((0, 0, 10, 10), (0, 0, 10, 10), False),  # the instance itself (IoU 1)
        ((0, 0, 10, 10), (0, 0, 10, 5), False),  # IoU 0.5 = propose_iou: the instance, not a proposal
        ((0, 0, 10, 10), (0, 0, 10, 4), True),  # IoU 0.4, 40% inside: a proposal
        ((2, 2, 6, 6), (0, 0, 20, 20), False),  # wholly inside a larger instance: a part of it (IoU 0.04)
        ((0, 0, 10, 10), (1, 0, 20, 20), False),  # 90% inside (>= MOSTLY_INSIDE), IoU 0.24: a part
        ((0, 0, 10, 10), (3, 0, 20, 20), True),  # 70% inside, IoU 0.2: a proposal
        ((0, 0, 20, 20), (5, 5, 8, 8), True),  # contains a small instance: the larger object was missed
    ],
)
def test_a_generated_mask_is_a_proposal_when_no_instance_accounts_for_it(generated, instance, proposal):
    found = select_proposals(_instances(_mask(*generated)), _instances(_mask(*instance)), iou=0.5)
    assert len(found) == int(proposal)
    assert MOSTLY_INSIDE == 0.8


def test_proposals_keep_generator_order_ids_and_signals_and_get_tight_boxes():
    generated = _instances(_mask(0, 0, 4, 4), _mask(10, 10, 12, 12), _mask(15, 0, 20, 3), None)
    generated = generated.replace(
        xyxy=np.zeros((4, 4)), mask_score=[0.9, 0.8, 0.7, 0.6], class_id=[3, 3, 3, 3]
    ).with_extras(stability_score=np.array([0.91, 0.92, 0.93, 0.94]))
    found = select_proposals(generated, _instances(_mask(10, 10, 13, 13), None), iou=0.5)
    assert found.source_id.tolist() == [0, 1]  # the empty (None) mask is no proposal; the covered one is left out
    assert found.class_id.tolist() == [0, 0]
    assert found.xyxy.tolist() == [[0, 0, 4, 4], [15, 0, 20, 3]]
    assert found.mask_score.tolist() == pytest.approx([0.9, 0.7])
    assert found.extras["stability_score"].tolist() == [0.91, 0.93]


def test_propose_iou_is_checked():
    with pytest.raises(SamlabelError, match=r"propose_iou must lie in \(0, 1\]"):
        load_settings(propose_iou=0)


# ----------------------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_three_disc_images(tmp_path_factory.mktemp("three") / "src", n=3)


def _label(src: Path, out: Path, generator=None, **kw):
    gen = generator or FakeGenerator()
    return label(
        src, out, detector=MissingDetector(), segmenter=FakeSegmenter(), generator=gen, propose=True,
        progress=False, split="train=1", **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def proposed(images, tmp_path_factory):
    """A labelled dataset of the three-disc images, each with one proposal (the disc the detector missed)."""
    return _label(images, tmp_path_factory.mktemp("proposed") / "ds").out


@pytest.fixture
def out(proposed, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(proposed, dst)
    return dst


def test_the_disc_the_detector_missed_is_the_one_proposal(images, tmp_path):
    gen = FakeGenerator()
    result = _label(images, tmp_path / "ds", generator=gen)
    records = [r for _, r in Journal(tmp_path / "ds").records()]
    assert gen.calls == 3 and gen.covered == [3, 3, 3]  # called once per image, with its instances (2 + the tiny box)
    for r in records:
        assert len(r.proposals) == 1
        x0, y0, x1, y1 = r.proposals.masks[0].xyxy  # the third disc: centre (60 + i, 95 + i), radius 9
        assert (x1 - x0, y1 - y0) == (19, 19) and abs((x0 + x1) / 2 - 60.5) <= 2 and abs((y0 + y1) / 2 - 95.5) <= 2
        assert r.proposals.mask_score.tolist() == pytest.approx([0.93])
        assert len(r.instances) == 2  # the files hold what the detector found, no more
    report = result.report
    assert report["proposals"] == {
        "total": 3,
        "images": {f"train/images/img_0{i}.png": 1 for i in range(3)},
    }
    assert report["instances_total"] == 6
    assert "propose" in report["timings"]["this_run"]["stage_seconds"]
    assert json.loads((tmp_path / "ds" / "report.json").read_text())["proposals"]["total"] == 3
    assert check_yolo_matches_coco(tmp_path / "ds") == 6  # proposals never in the label files
    assert_valid(tmp_path / "ds")


def test_without_propose_records_and_report_keep_their_form(images, tmp_path):
    gen = FakeGenerator()
    result = label(
        images, tmp_path / "ds", detector=MissingDetector(), segmenter=FakeSegmenter(), generator=gen,
        progress=False, split="train=1",
    )  # fmt: skip
    assert gen.calls == 0
    assert "proposals" not in result.report
    assert "propose" not in result.report["timings"]["this_run"]["stage_seconds"]
    line = json.loads((tmp_path / "ds" / ".samlabel" / "journal.jsonl").read_text().splitlines()[0])
    assert "proposals" not in line


def test_a_record_with_proposals_round_trips_through_the_journal(proposed):
    for _, r in Journal(proposed).records():
        again = ImageRecord.from_json(json.loads(json.dumps(r.to_json())))
        assert again.to_json() == r.to_json()
        assert again.proposals.masks[0] == r.proposals.masks[0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: "not a list", "proposals: expected a list"),
        (lambda p: [{**p[0], "mask": None}], r"proposals\[0\]: expected an instance with a mask"),
        (lambda p: [{**p[0], "mask": {**p[0]["mask"], "h": 10**6}}], r"proposals\[0\]: mask size"),
        (lambda p: [{**p[0], "mask": {**p[0]["mask"], "counts": "zz"}}], "not in the RLE alphabet"),
        (lambda p: [{**p[0], "mask": {**p[0]["mask"], "counts": "3"}}], r"are not a COCO RLE of its 19x19 crop"),
        (lambda p: [{**p[0], "mask": {**p[0]["mask"], "x0": 150}}], r"lies outside the 160x120 image"),
    ],
)
def test_a_hostile_proposal_in_the_journal_is_refused(proposed, change, match):
    line = json.loads((proposed / ".samlabel" / "journal.jsonl").read_text().splitlines()[0])
    with pytest.raises(ValueError, match=match):
        ImageRecord.from_json({**line, "proposals": change(line["proposals"])})


def test_review_refuses_a_dataset_whose_journal_has_a_hostile_proposal(out):
    journal = out / ".samlabel" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    first = json.loads(lines[0])
    first["proposals"][0]["mask"]["counts"] = "3"
    journal.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(JournalDamaged, match=r"line 1 .*are not a COCO RLE"):
        ReviewStore(out)


def test_convert_proposes_what_the_source_annotators_missed(proposed, tmp_path):
    """``convert`` of a box dataset in which one image lost an annotation: that object comes back as a proposal."""
    src = tmp_path / "src"
    shutil.copytree(proposed / "train", src / "train")
    (src / "data.yaml").write_text("train: train/images\nnames: [ball, cube, cone]\n")
    (src / "train" / "_annotations.coco.json").unlink()
    label_file = src / "train" / "labels" / "img_00.txt"
    label_file.write_text(label_file.read_text().splitlines()[0] + "\n")  # the annotator missed the second disc
    from pipeline import convert

    result = convert(src, tmp_path / "out", segmenter=FakeSegmenter(), generator=FakeGenerator(), propose=True,
                     progress=False)  # fmt: skip
    assert result.report["proposals"]["images"] == {
        "train/images/img_00.png": 2,  # the disc the annotator left out, and the one the detector missed
        "train/images/img_01.png": 1,
        "train/images/img_02.png": 1,
    }


def test_cli_flags(images, tmp_path, monkeypatch):
    """``--propose --propose-iou`` reach the run's settings (the stages are the tests' fakes)."""
    import pipeline.api as api

    real = api.label
    monkeypatch.setattr(
        api,
        "label",
        lambda *a, **k: real(*a, **{**k, "detector": MissingDetector(), "segmenter": FakeSegmenter(),
                                    "generator": FakeGenerator()}),
    )  # fmt: skip
    out = tmp_path / "ds"
    assert main(["label", str(images), "--out", str(out), "--propose", "--propose-iou", "0.6", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["propose"] is True and report["settings"]["propose_iou"] == 0.6
    assert report["proposals"]["total"] == 3


@pytest.mark.parametrize(("detector", "said"), [
    (MissingDetector, "3 proposals (masks no instance accounts for) in 3 images: review them with `samlabel review "),
    (FakeDetector, "0 proposals: an instance accounts for every mask the generator found"),
])  # fmt: skip
def test_summary_sends_to_review_only_with_proposals(images, tmp_path, monkeypatch, caplog, detector, said):
    import pipeline.api as api

    real = api.label
    monkeypatch.setattr(
        api,
        "label",
        lambda *a, **k: real(*a, **{**k, "detector": detector(), "segmenter": FakeSegmenter(),
                                    "generator": FakeGenerator()}),
    )  # fmt: skip
    with caplog.at_level("INFO", logger="pipeline"):
        assert main(["label", str(images), "--out", str(tmp_path / "ds"), "--propose"]) == 0
    lines = [r.getMessage() for r in caplog.records if "proposals" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(said)
    assert ("samlabel review" in lines[0]) == (detector is MissingDetector)


# ----------------------------------------------------------------------------------------- review


def _client(out: Path) -> TestClient:
    return TestClient(create_app(ReviewStore(out), token=TOKEN, sam=FakeSamSession()), headers=AUTH)


def _put(image: dict, *, accept: dict[int, str] = (), dismiss=(), **extra) -> dict:
    """The body of a save that keeps the instances, accepts some proposals (id -> class) and dismisses others."""
    accept = dict(accept)
    kept = [{"id": i["id"], "class": i["class"], "rle": i["rle"]} for i in image["instances"]]
    new = [{"class": accept[p["id"]], "rle": p["rle"], "box": p["box"], "proposal": p["id"]}
           for p in image["proposals"] if p["id"] in accept]  # fmt: skip
    staying = [p["id"] for p in image["proposals"] if p["id"] not in accept and p["id"] not in dismiss]
    return {"version": image["version"], "instances": kept + new, "proposals": staying, **extra}


def test_review_shows_proposals_and_sorts_the_queue_by_them(out):
    # one image gets a second proposal by hand: the queue sorted by proposals puts it first
    journal = out / ".samlabel" / "journal.jsonl"
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    second = dict(lines[2]["proposals"][0], id=1)
    lines[2]["proposals"].append({**second, "mask": {**second["mask"], "x0": second["mask"]["x0"] + 30}})
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
    client = _client(out)
    queue = client.get("/api/images").json()
    assert [q["file_name"] for q in queue] == ["img_00.png", "img_01.png", "img_02.png"]
    by_proposals = client.get("/api/images", params={"sort": "proposals"}).json()
    assert [(q["file_name"], q["proposals"]) for q in by_proposals] == [
        ("img_02.png", 2), ("img_00.png", 1), ("img_01.png", 1)
    ]  # fmt: skip
    assert client.get("/api/images", params={"sort": "size"}).status_code == 422
    counts = client.get("/api/meta").json()["counts"]
    assert (counts["proposals"], counts["proposal_images"]) == (4, 3)
    image = client.get(f"/api/images/{queue[0]['id']}").json()
    (p,) = image["proposals"]
    assert p["id"] == 0 and p["bbox"][2:] == [19, 19] and p["mask_score"] == pytest.approx(0.93)
    assert p["signals"] == {"stability_score": 0.97}


def test_an_accepted_proposal_becomes_an_annotation_of_its_class_in_yolo_and_coco(out):
    client = _client(out)
    iid = client.get("/api/images").json()[0]["id"]
    image = client.get(f"/api/images/{iid}").json()
    assert client.put(f"/api/images/{iid}", json=_put(image, accept={0: "cone"})).status_code == 200
    after = client.get(f"/api/images/{iid}").json()
    assert after["proposals"] == [] and after["version"] == image["version"] + 1
    new = after["instances"][-1]
    assert (new["class"], new["source"], new["edited"]) == ("cone", "proposal", False)
    assert new["rle"] == image["proposals"][0]["rle"] and new["mask_score"] == pytest.approx(0.93)
    assert new["signals"]["stability_score"] == pytest.approx(0.97)
    anns = coco_by_image(out, "train")["img_00.png"]
    assert len(anns) == 3
    assert anns[-1]["category_id"] == 3 and anns[-1]["source"] == "proposal"  # cone: the third class
    assert [a.get("source") for a in anns[:2]] == [None, None]
    lines = (out / "train" / "labels" / "img_00.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 ")
    report = json.loads((out / "report.json").read_text())
    assert report["proposals"] == {"total": 2, "images": {"train/images/img_01.png": 1, "train/images/img_02.png": 1}}
    assert report["instances"]["train"]["cone"] == 1
    assert check_yolo_matches_coco(out) == 7
    assert_valid(out)


def test_a_dismissed_proposal_is_gone_after_a_restart(out):
    client = _client(out)
    iid = client.get("/api/images").json()[0]["id"]
    image = client.get(f"/api/images/{iid}").json()
    labels_before = (out / "train" / "labels" / "img_00.txt").read_bytes()
    assert client.put(f"/api/images/{iid}", json=_put(image, dismiss={0})).status_code == 200
    client.app.close()  # the server stops (report.html rebuilt)
    again = _client(out)  # a new server on the same dataset
    after = again.get(f"/api/images/{iid}").json()
    assert after["proposals"] == [] and len(after["instances"]) == len(image["instances"])
    assert (out / "train" / "labels" / "img_00.txt").read_bytes() == labels_before  # no label changed
    assert json.loads((out / "report.json").read_text())["proposals"]["total"] == 2
    assert [q["proposals"] for q in again.get("/api/images").json()] == [0, 1, 1]


def test_a_save_without_proposals_keeps_them(out):
    client = _client(out)
    iid = client.get("/api/images").json()[0]["id"]
    image = client.get(f"/api/images/{iid}").json()
    body = _put(image, reviewed=True)
    del body["proposals"]
    assert client.put(f"/api/images/{iid}", json=body).status_code == 200
    assert len(client.get(f"/api/images/{iid}").json()["proposals"]) == 1


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda b: b["instances"].__setitem__(-1, {**b["instances"][-1], "proposal": 7}),
            "proposal 7 is not a proposal",
        ),
        (lambda b: b["instances"].append(dict(b["instances"][-1])), "proposal 0 is accepted twice"),
        (lambda b: b.__setitem__("proposals", [0]), "0 is accepted as an instance and kept as a proposal"),
        (lambda b: b.__setitem__("proposals", [5]), "proposals: 5 is not a proposal"),
        (lambda b: b["instances"].__setitem__(-1, {**b["instances"][-1], "id": 0}), "leave id out"),
    ],
)
def test_a_save_that_names_proposals_wrongly_is_refused(out, edit, match):
    client = _client(out)
    iid = client.get("/api/images").json()[0]["id"]
    image = client.get(f"/api/images/{iid}").json()
    body = _put(image, accept={0: "ball"})
    edit(body)
    got = client.put(f"/api/images/{iid}", json=body)
    assert got.status_code == 400 and re.search(match, got.json()["detail"]), got.json()
    assert client.get(f"/api/images/{iid}").json()["version"] == image["version"]  # nothing saved


def test_a_refined_proposal_keeps_its_source_and_gets_no_generator_score(out):
    store = ReviewStore(out)
    iid = store.images()[0]["id"]
    image = store.image(iid)
    p = image["proposals"][0]
    x, y, w, h = p["bbox"]
    full = np.zeros((120, 160), dtype=bool)
    full[y : y + h, x : x + w] = True  # the proposal's box, filled: another mask
    from pipeline.masks import mask_to_rle
    from pipeline.review.store import InstanceEdit

    rle = mask_to_rle(CropMask.from_full(full), (120, 160))
    keep = [InstanceEdit(i["id"], i["class"], i["rle"]) for i in image["instances"]]
    store.save(iid, version=image["version"], reviewed=False, proposals=[],
               instances=[*keep, InstanceEdit(None, "cube", rle, proposal=0)])  # fmt: skip
    new = store.image(iid)["instances"][-1]
    assert (new["class"], new["source"], new["mask_score"]) == ("cube", "proposal", None)
    with pytest.raises(ReviewError, match="proposal 0 is not a proposal"):
        store.save(
            iid, version=image["version"] + 1, reviewed=False, instances=[InstanceEdit(None, "cube", rle, proposal=0)]
        )


# ----------------------------------------------------------------------------------------- report.html


def test_report_html_lists_and_draws_the_proposals(out):
    from pipeline.report import write_report_html
    from pipeline.report.proposals import draw

    text = write_report_html(out).read_text()
    assert '<section id="proposals">' in text
    assert "3 proposals in 3 images" in text
    section = text[text.index('<section id="proposals">') :]
    section = section[: section.index("</section>")]
    assert section.count('data-kind="proposal"') == 3 and section.count("data:image/jpeg;base64,") == 3
    assert ">PROPOSALS<" in text.upper()  # the summary tile
    # the drawing: white dashes on the missed disc's outline, none on the instances' (class colours)
    record = next(r for _, r in Journal(out).records())
    from pipeline.images import load_image

    rgb = load_image(out / "train" / "images" / record.name).rgb
    bgr = draw(rgb, record, {0: "#ff0000", 1: "#00ff00"}, thumb_size=320)
    white = (bgr == 255).all(axis=2)
    x0, y0, x1, y1 = (int(v * 2) for v in record.proposals.masks[0].xyxy)  # thumb_size 320 = twice 160
    assert white[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3].sum() > 20  # dashes around the proposal
    ring = white.copy()
    ring[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = False
    assert ring.sum() == 0  # and nowhere else


def test_report_html_survives_a_damaged_journal_and_a_run_without_proposals_has_no_section(out, images, tmp_path):
    from pipeline.report import write_report_html

    journal = out / ".samlabel" / "journal.jsonl"
    journal.write_text("not json\n" + journal.read_text())
    text = write_report_html(out).read_text()
    assert "the run&#x27;s journal could not be read" in text and "3 proposals in 3 images" in text
    plain = label(images, tmp_path / "plain", detector=MissingDetector(), segmenter=FakeSegmenter(), progress=False)
    assert 'id="proposals"' not in (plain.out / "report.html").read_text()
