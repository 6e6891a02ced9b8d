"""Concept prompts: ``--prompts`` (classes, ontology, per-phrase thresholds), ``--exemplars``, the concept stage
over a ``ConceptModel`` (a fake whose answer depends on the phrase), and its datasets (report, resume, Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import label
from pipeline.cli import main
from pipeline.concepts.exemplars import Exemplar, attach, read_exemplars
from pipeline.concepts.ontology import Ontology, Phrase
from pipeline.concepts.stage import SAME_OBJECT_IOU, ConceptStage, crop_iou
from pipeline.config import Settings, load_settings
from pipeline.errors import SamlabelError
from pipeline.masks import CropMask
from pipeline.run.state import Journal
from pipeline.types import DROP_REASON, Instances
from tests.concept_fakes import BLUE, GREEN, RED, FakeConceptModel, disc_photos, disc_scene
from tests.conftest import FakeSegmenter
from tests.helpers import assert_valid, check_yolo_matches_coco, coco_by_image, coco_data, label_files_bytes

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ --prompts


@pytest.mark.parametrize(
    ("given", "names", "phrases"),
    [
        # a list of classes, each found by its own name, in the order given
        ("person, bicycle, traffic light", ["person", "bicycle", "traffic light"],
         [("person", 0, None), ("bicycle", 1, None), ("traffic light", 2, None)]),
        # an ontology: several phrases per class
        ("person: man, woman, child; bike: bicycle, motorbike", ["person", "bike"],
         [("man", 0, None), ("woman", 0, None), ("child", 0, None), ("bicycle", 1, None), ("motorbike", 1, None)]),
        # per-phrase thresholds
        ("helmet@0.6, person", ["helmet", "person"], [("helmet", 0, 0.6), ("person", 1, None)]),
        # groups mixed; a threshold inside an ontology group
        ("person: man@0.4, woman; car", ["person", "car"], [("man", 0, 0.4), ("woman", 0, None), ("car", 1, None)]),
        # YAML mapping: a list, a comma text, one phrase with its threshold, a bare class
        ({"person": ["man", "woman"], "bike": "bicycle, motorbike", "helmet": "helmet@0.6", "dog": None},
         ["person", "bike", "helmet", "dog"],
         [("man", 0, None), ("woman", 0, None), ("bicycle", 1, None), ("motorbike", 1, None), ("helmet", 2, 0.6),
          ("dog", 3, None)]),
        # YAML list: one class per entry
        (["person", "bike: bicycle, motorbike", "cone@0.3"], ["person", "bike", "cone"],
         [("person", 0, None), ("bicycle", 1, None), ("motorbike", 1, None), ("cone", 2, 0.3)]),
    ],
)  # fmt: skip
def test_prompts_parse_to_classes_and_phrases(given, names, phrases):
    ontology = Ontology.parse(given)
    assert list(ontology.names) == names
    assert [(p.text, p.class_id, p.threshold) for p in ontology.phrases] == phrases
    assert Ontology.parse(str(ontology)) == ontology  # the text form (state.json) reads back equal


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("person,,bike", r"empty phrase in 'person,,bike'"),
        ("person, ", r"empty phrase"),
        ("person:", r"class 'person' has no phrases|empty phrase"),
        (": man", r"class name before ':' is empty"),
        ("helmet@high", r"phrase 'helmet': threshold 'high' is not a number in \[0, 1\]"),
        ("helmet@1.5", r"threshold '1.5' is not a number in \[0, 1\]"),
        ("helmet@", r"threshold '' is not a number"),
        ("person, person", r"phrase 'person' given twice"),
        ("a: x; b: x", r"phrase 'x' given twice"),
        ("person: man; person: woman", r"class 'person' given twice"),
        ("person@0.5: man", r"thresholds go on phrases"),
        (";", r"no classes given"),
        ({"person": 3}, r"class 'person': expected a phrase or a list of phrases"),
    ],
)
def test_malformed_prompts_are_one_line_errors(given, message):
    with pytest.raises(SamlabelError, match=message) as e:
        Ontology.parse(given)
    assert "\n" not in str(e.value)


def test_prompts_from_a_yaml_config_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompts:\n  person: [man, woman@0.7]\n  bike: bicycle\nexemplars: ex.json\n")
    s = load_settings(cfg)
    assert str(s.prompts) == "person: man, woman@0.7; bike: bicycle"
    assert s.exemplars == "ex.json"
    assert Settings(**s.to_json()) == s  # state.json keeps the text form
    assert load_settings(cfg, prompts="cat, dog").prompts.names == ("cat", "dog")


def test_malformed_prompts_on_the_cli_exit_2_with_one_line(tmp_path, capsys):
    src = disc_photos(tmp_path / "photos")
    code = main(["label", str(src), "--out", str(tmp_path / "out"), "--prompts", "cat,,dog", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "samlabel: error: prompts: empty phrase in 'cat,,dog'; separate phrases with single commas"
    ]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the stage


def _model(**scores):
    colours = {"apple": RED, "cherry": RED, "tomato": RED, "sea": BLUE, "sky": BLUE, "grass": GREEN}
    return FakeConceptModel(colours, {"apple": 0.9, "cherry": 0.85, "tomato": 0.7, "sea": 0.5, **scores})


SCENE = disc_scene([(30, 30, 12, RED), (90, 60, 15, BLUE), (100, 20, 8, RED)])


def _kept(inst):
    return inst[np.array([r is None for r in inst.extras[DROP_REASON]], dtype=bool)]


def test_each_phrase_lands_in_its_class_with_one_model_call_per_image():
    model = _model()
    stage = ConceptStage(model, Ontology.parse("sea, apple"), conf=0.25)
    inst = stage(SCENE)
    assert model.calls == [(["sea", "apple"], 0)]  # all phrases of all classes, in one call
    assert stage.names == ["sea", "apple"]
    assert inst.class_id.tolist() == [1, 1, 0]  # by score: the apples (0.9), then the sea (0.5)
    assert inst.extras["phrase"].tolist() == ["apple", "apple", "sea"]
    assert all(r is None for r in inst.extras[DROP_REASON])
    blue = inst.masks[2].full(SCENE.shape[:2])
    assert (blue == np.all(SCENE == BLUE, axis=-1)).all()  # the model's mask, no second pass
    assert inst.xyxy[2].tolist() == list(inst.masks[2].xyxy)  # the mask's box is the prompt box
    assert np.allclose(inst.confidence, [0.9, 0.9, 0.5])
    assert inst.source_id.tolist() == [1, 2, 0]  # each one's place in the model's answers (sea's first)


def test_an_ontology_keeps_an_object_found_by_two_phrases_of_one_class_once():
    inst = ConceptStage(_model(), Ontology.parse("fruit: apple, cherry"), conf=0.25)(SCENE)
    kept = _kept(inst)
    assert kept.class_id.tolist() == [0, 0] and kept.extras["phrase"].tolist() == ["apple", "apple"]
    reasons = [r for r in inst.extras[DROP_REASON] if r is not None]
    assert len(reasons) == 2
    assert all(r.startswith("found again by phrase 'cherry': same object as instance") for r in reasons)


@pytest.mark.parametrize(("tomato", "kept_class"), [(0.7, "fruit"), (0.95, "veg")])
def test_an_object_found_by_two_classes_is_kept_in_the_class_with_the_higher_score(tomato, kept_class):
    stage = ConceptStage(_model(tomato=tomato), Ontology.parse("fruit: apple; veg: tomato"), conf=0.25)
    inst = stage(SCENE)
    kept = _kept(inst)
    assert [stage.names[c] for c in kept.class_id] == [kept_class, kept_class]
    other = "veg" if kept_class == "fruit" else "fruit"
    reasons = [r for r in inst.extras[DROP_REASON] if r is not None]
    assert len(reasons) == 2
    assert all(f"also found as class {other!r}" in r and f"kept as class {kept_class!r}" in r for r in reasons)


@pytest.mark.parametrize(
    ("prompts", "conf", "sea_found"),
    [
        ("sea, apple", 0.25, True),  # sea scores 0.5: above --conf
        ("sea, apple", 0.6, False),  # ... below it
        ("sea@0.6, apple", 0.25, False),  # its own threshold wins over --conf
        ("sea@0.4, apple", 0.6, True),  # both ways
        ("sea@0.5, apple", 0.6, True),  # a score at the threshold is kept
    ],
)
def test_per_phrase_thresholds(prompts, conf, sea_found):
    inst = ConceptStage(_model(), Ontology.parse(prompts), conf=conf)(SCENE)
    assert ("sea" in inst.extras["phrase"].tolist()) == sea_found
    assert inst.extras["phrase"].tolist().count("apple") == (2 if conf <= 0.9 else 0)


def test_exemplars_change_the_answer():
    ontology = Ontology.parse("thing")
    assert len(ConceptStage(_model(), ontology, conf=0.25)(SCENE)) == 0  # no word for it: nothing found
    other = disc_scene([(50, 50, 20, BLUE)])
    ontology, exemplars = attach([Exemplar(rgb=other, xyxy=(30, 30, 70, 70), name="thing", source="x.png")], ontology)
    model = _model()
    inst = ConceptStage(model, ontology, conf=0.25, exemplars=exemplars)(SCENE)
    assert model.calls == [(["thing"], 1)]
    assert inst.extras["phrase"].tolist() == ["thing"] and len(inst) == 1  # the blue disc, like the example
    assert (inst.masks[0].full(SCENE.shape[:2]) == np.all(SCENE == BLUE, axis=-1)).all()


def test_the_model_gets_each_exemplar_image_once_with_all_its_boxes_and_the_same_objects_every_call():
    from pipeline.concepts import exemplar as prompt

    other = disc_scene([(30, 30, 10, BLUE), (80, 50, 12, BLUE)])
    boxes = [
        Exemplar(rgb=other, xyxy=(20, 20, 40, 40), name="thing", source="x.png"),
        Exemplar(rgb=other, xyxy=(68, 38, 92, 62), name="thing", source="x.png"),
        Exemplar(rgb=SCENE, xyxy=(17.5, 17.5, 42.5, 42.5), name="thing", source="s.png"),
    ]
    ontology, exemplars = attach(boxes, Ontology.parse("thing"))
    seen = []

    def model(rgb, phrases, given=()):
        seen.append(tuple(given))
        return [Instances.empty() for _ in phrases]

    stage = ConceptStage(model, ontology, conf=0.25, exemplars=exemplars)
    stage(SCENE)
    stage(other)
    first, second = seen
    assert [type(e) for e in first] == [prompt.Exemplar] * 2  # as SAM 3 takes them: one per image and phrase
    assert [len(e.xyxy) for e in first] == [2, 1] and first[0].image is other and first[1].image is SCENE
    assert first[0].xyxy.tolist() == [[20, 20, 40, 40], [68, 38, 92, 62]] and first[0].phrase == "thing"
    assert all(a is b for a, b in zip(first, second, strict=True))  # the same objects: encoded once per run


def test_an_exemplar_image_keeps_its_own_boxes():
    ontology, exemplars = attach(
        [Exemplar(rgb=SCENE, xyxy=(17.5, 17.5, 42.5, 42.5), name="apple", source="s.png")], Ontology.parse("apple")
    )
    inst = ConceptStage(_model(), ontology, conf=0.25, exemplars=exemplars)(SCENE)
    assert inst.masks[0] is None and np.isnan(inst.confidence[0])  # the person's box, first; SAM makes its mask
    assert inst.xyxy[0].tolist() == [17.5, 17.5, 42.5, 42.5] and inst.extras[DROP_REASON][0] is None
    reasons = dict(zip([tuple(b) for b in inst.xyxy[1:].tolist()], inst.extras[DROP_REASON][1:], strict=True))
    assert reasons[(18, 18, 43, 43)].startswith("found again by phrase 'apple': same object as instance")
    assert "an exemplar box" in reasons[(18, 18, 43, 43)]  # the model found the exemplar's own disc: dropped
    assert reasons[(92, 12, 109, 29)] is None  # the other apple, the model's, kept
    other = ConceptStage(_model(), ontology, conf=0.25, exemplars=exemplars)(SCENE[:, ::-1].copy())
    assert not any(m is None for m in other.masks)  # another image: no exemplar box


def test_crop_iou_is_the_mask_iou():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[2:10, 2:10], b[5:15, 5:12] = True, True
    expected = (a & b).sum() / (a | b).sum()
    assert crop_iou(CropMask.from_full(a), CropMask.from_full(b)) == pytest.approx(expected)
    assert 0 < SAME_OBJECT_IOU < 0.8  # below the duplicate flag's threshold (see pipeline.concepts.stage)


# ------------------------------------------------------------------------------------------ datasets

PROMPTS = "fruit: apple, cherry; veg: tomato; water: sea@0.6, sky"


def _label(src, out, **kw):
    model = _model(sky=0.45)
    return label(src, out, detector=model, segmenter=FakeSegmenter(), prompts=PROMPTS, progress=False, **kw)


def test_a_concept_run_writes_a_valid_dataset_and_lists_what_it_dropped(tmp_path):
    src = disc_photos(tmp_path / "photos")
    result = _label(src, tmp_path / "out", split="train=1")
    out = tmp_path / "out"
    assert result.report["names"] == ["fruit", "veg", "water"]
    assert_valid(out)
    assert check_yolo_matches_coco(out) == 6  # 4 red discs (fruit) + 2 blue (water, by 'sky' at 0.45)
    anns = coco_by_image(out, "train")  # pycocotools reads it
    assert [a["category_id"] for a in anns["b.png"]] == [1, 1]
    assert [a["phrase"] for a in anns["a.png"]] == ["apple", "sky"]
    for a in (a for v in anns.values() for a in v):
        assert a["box_fit"] == 1.0 and a["outside_box"] == 0.0  # quality signals: the mask's box is its prompt box
        assert "low_score" not in a["flags"] and "stability_score" not in a  # no SAM pass scored it
    dropped = result.report["dropped_instances"]
    by_reason = sorted(d["reason"].split(":")[0] for d in dropped)
    assert (
        by_reason
        == ["also found as class 'veg' by phrase 'tomato' (score 0.700)"] * 4 + ["found again by phrase 'cherry'"] * 4
    )  # every red disc: cherry merged into fruit, tomato lost to apple
    assert {d["class"] for d in dropped} == {"fruit", "veg"}
    assert all("kept as class 'fruit'" in d["reason"] for d in dropped if d["class"] == "veg")


def _exemplar_coco(folder: Path, image: Path, boxes: list[tuple[str, list[float]]]) -> Path:
    """A COCO json beside ``image`` with ``boxes`` (class name, xywh)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / image.name).write_bytes(image.read_bytes())
    names = list(dict.fromkeys(n for n, _ in boxes))
    w, h = Image.open(image).size
    coco = {
        "images": [{"id": 1, "file_name": image.name, "width": w, "height": h}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": names.index(n) + 1,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (n, b) in enumerate(boxes)
        ],
    }
    path = folder / "exemplars.json"
    path.write_text(json.dumps(coco))
    return path


def test_exemplars_from_coco_find_more_like_them_and_their_image_keeps_its_boxes(tmp_path):
    src = disc_photos(tmp_path / "photos")
    ex = _exemplar_coco(tmp_path / "ex", src / "a.png", [("berry", [17, 17, 27, 27])])  # a's first red disc
    model = FakeConceptModel({}, {})
    result = label(src, tmp_path / "out", detector=model, segmenter=FakeSegmenter(), exemplars=str(ex),
                   split="train=1", progress=False)  # fmt: skip
    assert result.report["names"] == ["berry"]  # no --prompts: the exemplars' classes
    assert {calls[1] for calls in model.calls} == {1}  # the exemplar went with every call
    anns = coco_by_image(tmp_path / "out", "train")
    assert {k: len(v) for k, v in anns.items()} == {"a.png": 1, "b.png": 2, "c.png": 0, "d.png": 1}  # red discs
    assert anns["a.png"][0]["phrase"] == "(exemplar box)" and "confidence" not in anns["a.png"][0]
    assert [d["reason"].split(":")[0] for d in result.report["dropped_instances"]] == [
        "found again by phrase 'berry'"
    ]  # on a.png the model found the exemplar's own disc again
    assert_valid(tmp_path / "out")


def test_exemplars_from_a_yolo_folder(tmp_path):
    src = disc_photos(tmp_path / "photos")
    ex = tmp_path / "ex"
    (ex / "images").mkdir(parents=True)
    (ex / "labels").mkdir()
    (ex / "images" / "c.png").write_bytes((src / "c.png").read_bytes())
    (ex / "labels" / "c.txt").write_text("1 0.5 0.5 0.3125 0.4167\n")  # the blue disc, class 'pond'
    (ex / "classes.txt").write_text("grassy\npond\n")
    found = read_exemplars(ex)
    assert [(e.name, e.source) for e in found] == [("pond", str(ex / "images" / "c.png"))]
    assert np.allclose(found[0].xyxy, (44, 28, 84, 68), atol=0.05)
    ontology, tied = attach(found, Ontology.parse("water: sea, sky; pond"))
    assert [e.phrase for e in tied] == ["pond"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.json", r"--exemplars .*missing.json: no such file or folder"),
        (lambda d: (d / "x.txt").write_text("x") and d / "x.txt", r"expected a COCO .json"),
        (lambda d: _exemplar_coco(d / "e", d / "a.png", [("cat", [1, 1, 5, 5])]),
         r"--exemplars: class\(es\) \['cat'\] not among the --prompts classes \['fruit', 'veg', 'water'\]"),
    ],
)  # fmt: skip
def test_exemplar_errors_are_one_line(tmp_path, make, message):
    src = disc_photos(tmp_path)
    with pytest.raises(SamlabelError, match=message):
        _label(src, tmp_path / "out", exemplars=str(make(tmp_path)))


def test_sam3_weights_are_never_downloaded_a_missing_file_says_where_to_get_them(tmp_path, capsys):
    src = disc_photos(tmp_path / "photos")
    code = main(["label", str(src), "--out", str(tmp_path / "out"), "--detector", "sam3.pt", "--prompts", "cat", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "sam3.pt: no such file" in err and "https://huggingface.co/facebook/sam3" in err
    assert "--detector PATH/sam3.pt" in err


def test_a_concept_model_without_prompts_is_refused(tmp_path):
    src = disc_photos(tmp_path / "photos")
    with pytest.raises(SamlabelError, match=r"a concept model finds what it is asked for: give --prompts"):
        label(src, tmp_path / "out", detector=_model(), segmenter=FakeSegmenter(), progress=False)


def test_classes_is_a_synonym_of_prompts_for_a_concept_model(tmp_path):
    src = disc_photos(tmp_path / "photos")
    a = label(src, tmp_path / "a", detector=_model(), segmenter=FakeSegmenter(), prompts="apple, sea", progress=False)
    b = label(src, tmp_path / "b", detector=_model(), segmenter=FakeSegmenter(), classes="apple,sea", progress=False)
    assert a.report["names"] == b.report["names"] == ["apple", "sea"]
    assert label_files_bytes(tmp_path / "a") == label_files_bytes(tmp_path / "b")
    with pytest.raises(SamlabelError, match="--prompts and --classes both given"):
        label(src, tmp_path / "c", detector=_model(), prompts="apple", classes="apple", progress=False)


# ------------------------------------------------------------------------------------------ resume, Ray

SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from pipeline import label
from tests.concept_fakes import FakeConceptModel, RED, BLUE, GREEN
from tests.conftest import FakeSegmenter

class Slow(FakeConceptModel):
    def __call__(self, rgb, phrases, exemplars=()):
        time.sleep(0.1)
        return super().__call__(rgb, phrases, exemplars)

model = Slow({{"apple": RED, "cherry": RED, "tomato": RED, "sea": BLUE, "sky": BLUE}},
             {{"apple": 0.9, "cherry": 0.85, "tomato": 0.7, "sea": 0.5, "sky": 0.45}})
label({src!r}, {out!r}, detector=model, segmenter=FakeSegmenter(), prompts={prompts!r}, progress=False)
"""


def _many(root: Path, n: int = 24) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        discs = [
            (int(rng.integers(12, 116)), int(rng.integers(12, 84)), int(rng.integers(4, 11)), (RED, BLUE, GREEN)[k % 3])
            for k in range(int(rng.integers(1, 5)))
        ]
        Image.fromarray(disc_scene(discs)).save(root / f"img_{i:02d}.png")
    return root


def test_killed_and_resumed_concept_run_equals_a_clean_one(tmp_path):
    src = _many(tmp_path / "src")
    _label(src, tmp_path / "clean")
    out = tmp_path / "killed"
    code = SCRIPT.format(root=str(ROOT), src=str(src), out=str(out), prompts=PROMPTS)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list(Journal(out).records()) if (out / ".samlabel").is_dir() else []) < 5 and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(Journal(out).records()))
    assert 0 < done < 24  # killed mid-run
    _label(src, out)  # resumed
    assert label_files_bytes(out) == label_files_bytes(tmp_path / "clean")
    assert coco_data(out) == coco_data(tmp_path / "clean")
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "clean"))
    assert ra["dropped_instances"] == rb["dropped_instances"] and ra["images"] == rb["images"]
    assert_valid(out)


@pytest.mark.ray
def test_concept_run_on_ray_equals_local(tmp_path):
    pytest.importorskip("ray")
    from tests.helpers import local_ray

    src = disc_photos(tmp_path / "photos")
    ex = _exemplar_coco(tmp_path / "ex", src / "c.png", [("water", [44, 28, 40, 40])])
    _label(src, tmp_path / "local", exemplars=str(ex))
    with local_ray():
        _label(src, tmp_path / "ray", exemplars=str(ex), engine="ray")
    a, b = tmp_path / "local", tmp_path / "ray"
    assert label_files_bytes(a) == label_files_bytes(b)
    assert coco_data(a) == coco_data(b)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        del r["timings"], r["settings"]
    assert ra == rb and ra["dropped_instances"]
    assert_valid(b)


def test_phrase_dataclass_text_form():
    assert str(Phrase("helmet", 0, 0.6)) == "helmet@0.6" and str(Phrase("helmet", 0)) == "helmet"


def test_other_exemplar_boxes_are_another_run_not_a_resume(tmp_path):
    src = disc_photos(tmp_path / "photos")
    ex = _exemplar_coco(tmp_path / "ex", src / "a.png", [("fruit", [17, 17, 27, 27])])
    _label(src, tmp_path / "out", exemplars=str(ex))
    _exemplar_coco(tmp_path / "ex", src / "a.png", [("fruit", [10, 10, 30, 30])])  # same file name, other box
    with pytest.raises(SamlabelError, match="holds a dataset from a run with other inputs or settings"):
        _label(src, tmp_path / "out", exemplars=str(ex))


def test_exemplars_need_a_concept_model(tmp_path):
    from tests.conftest import FakeDetector

    src = disc_photos(tmp_path / "photos")
    ex = _exemplar_coco(tmp_path / "ex", src / "a.png", [("ball", [17, 17, 27, 27])])
    with pytest.raises(SamlabelError, match=r"--exemplars: --detector .* takes no example boxes"):
        label(src, tmp_path / "out", detector=FakeDetector(), segmenter=FakeSegmenter(), exemplars=str(ex))


def test_ultralytics_trainer_reads_a_concept_dataset(tmp_path):
    from tests.helpers import ultralytics_segment_labels

    src = disc_photos(tmp_path / "photos")
    _label(src, tmp_path / "out", split="train=1")
    labels = ultralytics_segment_labels(tmp_path / "out")["train"]
    assert sorted(len(lb["cls"]) for lb in labels) == [1, 1, 2, 2]  # a: red + blue, b: 2 red, c: blue, d: red
    assert {int(c) for lb in labels for c in lb["cls"].ravel()} == {0, 2}  # fruit and water; veg lost every disc
