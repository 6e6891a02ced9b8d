from __future__ import annotations

import os

import pytest

from pipeline.errors import SamlabelError
from pipeline.sources import assign_split, find_images, parse_split, plan_items


def _touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_folder_is_searched_recursively_skipping_hidden_and_non_images(tmp_path):
    _touch(tmp_path, "a.jpg", "b.JPG", "s/c.png", "s/t/d.webp", ".h.jpg", ".git/e.jpg", "notes.txt", "x.jpg.bak")
    rels = [rel for _, rel in find_images([tmp_path])]
    assert rels == ["a.jpg", "b.JPG", "s/c.png", "s/t/d.webp"]


def test_glob_source(tmp_path):
    _touch(tmp_path, "a/x.jpg", "a/y.png", "b/z.jpg")
    assert [rel for _, rel in find_images([str(tmp_path / "*" / "*.jpg")])] == ["a/x.jpg", "b/z.jpg"]


def test_several_sources_never_share_an_identity(tmp_path):
    """cam1/0001.jpg and cam2/0001.jpg are two images: each keeps its own name and output."""
    _touch(tmp_path, "cam1/0001.jpg", "cam2/0001.jpg", "other/cam1/0002.jpg", "solo.png")
    sources = [tmp_path / "cam1", tmp_path / "cam2", tmp_path / "other" / "cam1", tmp_path / "solo.png"]
    rels = [rel for _, rel in find_images(sources)]
    assert rels == ["0-cam1/0001.jpg", "2-cam1/0002.jpg", "cam2/0001.jpg", f"{tmp_path.name}/solo.png"]
    names = [it.name for it in plan_items(find_images(sources), {"train": 1.0})]
    assert len(set(names)) == 4


def test_output_folder_inside_the_source_is_not_an_input(tmp_path):
    _touch(tmp_path, "a.jpg", "ds/train/images/a.jpg")
    assert [rel for _, rel in find_images([tmp_path], exclude=tmp_path / "ds")] == ["a.jpg"]


def test_duplicate_relative_paths_are_refused(tmp_path):
    _touch(tmp_path, "a.jpg", "b.jpg")
    with pytest.raises(SamlabelError, match="two images share the relative path 'x.jpg'"):
        plan_items([(tmp_path / "a.jpg", "x.jpg"), (tmp_path / "b.jpg", "x.jpg")], {"train": 1.0})


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SamlabelError, match="does not exist"):
        find_images([tmp_path / "nope"])


def test_symlink_loop_terminates(tmp_path):
    _touch(tmp_path, "a/x.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [rel for _, rel in find_images([tmp_path])] == ["a/x.jpg"]


def test_a_file_and_a_symlink_to_it_give_one_image_under_the_files_name(tmp_path):
    _touch(tmp_path, "plain.jpg")
    os.symlink(tmp_path / "plain.jpg", tmp_path / "link.jpg")  # sorts first, yet is not the file's name
    assert [rel for _, rel in find_images([tmp_path])] == ["plain.jpg"]


def test_output_names_unique_even_for_shared_stems(tmp_path):
    _touch(tmp_path, "x.jpg", "x.png", "a/x.jpg", "b/x.jpg", "a_y.jpg", "a/y.jpg", "solo.jpg", "ü ber.jpg")
    items = plan_items(find_images([tmp_path]), {"train": 1.0})
    names = {it.rel: it.name for it in items}
    stems = [os.path.splitext(n)[0].casefold() for n in names.values()]
    assert len(set(stems)) == len(stems)  # label files never collide
    assert names["solo.jpg"] == "solo.jpg" and names["a/x.jpg"] == "a_x.jpg" and names["ü ber.jpg"] == "ü ber.jpg"
    assert names["x.jpg"].startswith("x_") and names["x.png"].startswith("x_") and names["x.png"].endswith(".png")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("train=0.8,valid=0.2", {"train": 0.8, "valid": 0.2}),
        ("train=1", {"train": 1.0}),
        (
            "train=8,val=1,test=1",
            {"train": 0.8, "valid": 0.1, "test": 0.1},
        ),  # 'val' means 'valid'; normalised
    ],
)
def test_parse_split(spec, expected):
    assert parse_split(spec) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["train=0", "training=1", "train=-1,valid=2", "train=abc"])
def test_parse_split_rejects(spec):
    with pytest.raises(SamlabelError, match="bad --split"):
        parse_split(spec)


def test_split_is_deterministic_and_stable_when_images_are_added():
    fr = parse_split("train=0.8,valid=0.2")
    rels = [f"img_{i}.jpg" for i in range(1000)]
    first = {r: assign_split(r, fr) for r in rels}
    assert {r: assign_split(r, fr) for r in rels + ["new.jpg"]} | {} == {
        **first,
        "new.jpg": assign_split("new.jpg", fr),
    }
    share = sum(s == "train" for s in first.values()) / len(rels)
    assert 0.75 < share < 0.85


@pytest.mark.parametrize("out, source", [(".", "."), (".", "sub"), (".", "sub/x.jpg"), (".", "sub/*.jpg")])
def test_an_output_folder_that_is_or_holds_the_source_is_refused_in_one_line(tmp_path, out, source):
    """``label src/ --out src/`` excludes every image as the output's own: said as what it is, not 'no images'."""
    _touch(tmp_path, "a.jpg", "sub/x.jpg")
    where = "is" if out == source else "contains"
    with pytest.raises(SamlabelError, match=rf"^--out \S+ {where} the source \S+: the dataset would be written") as e:
        find_images([tmp_path / source], exclude=tmp_path / out)
    assert "\n" not in str(e.value)


def test_label_into_the_source_folder_says_so(tmp_path):
    from pipeline import label
    from tests.conftest import FakeDetector, FakeSegmenter, make_photos

    src = make_photos(tmp_path / "src")
    with pytest.raises(SamlabelError, match="is the source"):
        label(src, src, detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    assert not (src / "train").exists() and not (src / ".samlabel").exists()


@pytest.mark.parametrize("glob_source", [False, True])
def test_folders_holding_a_dataset_are_not_searched(tmp_path, caplog, glob_source):
    """Images of a dataset inside a source (samlabel's state, or data.yaml + split folders) are its copies."""
    _touch(tmp_path, "a.jpg", "sub/b.jpg")
    _touch(tmp_path, "ds/.samlabel/state.json", "ds/train/images/a.jpg", "ds/valid/images/sub_b.jpg")
    _touch(tmp_path, "sub/export/data.yaml", "sub/export/train/images/x.jpg", "sub/export/test/images/y.jpg")
    _touch(tmp_path, "sub/coco/annotations/instances_train.json", "sub/coco/images/train/z.jpg")
    _touch(tmp_path, "sub/notads/train/images/kept.jpg")  # split folders without data.yaml: a plain folder
    source = str(tmp_path / "**" / "*.jpg") if glob_source else tmp_path
    with caplog.at_level("INFO", logger="pipeline"):
        rels = [rel for _, rel in find_images([source])]
    assert rels == ["a.jpg", "sub/b.jpg", "sub/notads/train/images/kept.jpg"]
    skipped = {r.getMessage().split(":")[0] for r in caplog.records if "holds a dataset" in r.getMessage()}
    assert skipped == {str(tmp_path / "ds"), str(tmp_path / "sub" / "export"), str(tmp_path / "sub" / "coco")}


def test_a_dataset_given_as_the_source_is_searched(tmp_path):
    _touch(tmp_path, "ds/.samlabel/state.json", "ds/train/images/a.jpg")
    assert [rel for _, rel in find_images([tmp_path / "ds"])] == ["train/images/a.jpg"]


def test_labeling_again_does_not_take_an_earlier_dataset_inside_the_source_for_new_images(tmp_path, caplog):
    from pipeline import label
    from tests.conftest import FakeDetector, FakeSegmenter, make_photos

    src = make_photos(tmp_path / "src")
    first = label(src, src / "ds", detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    with caplog.at_level("INFO", logger="pipeline"):
        other = label(src, tmp_path / "other", detector=FakeDetector(), segmenter=FakeSegmenter(), progress=False)
    assert sum(other.report["images"].values()) == sum(first.report["images"].values()) == 6
    assert any(f"{src / 'ds'}: holds a dataset" in r.getMessage() for r in caplog.records)
