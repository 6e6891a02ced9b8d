from __future__ import annotations

import pytest

from pipeline.cli import build_parser
from pipeline.config import Settings, load_settings
from pipeline.errors import SamlabelError
from pipeline.quality import QualityThresholds


def test_yaml_then_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("conf: 0.4\nmax-det: 7\nformats: [coco]\nclasses: [a, b]\n")
    s = load_settings(cfg, conf=0.5, device=None)
    assert (s.conf, s.max_det, s.formats, s.classes) == (0.5, 7, ("coco",), ("a", "b"))


def test_unknown_key_is_refused_with_known_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("confidence: 0.4\n")
    with pytest.raises(SamlabelError, match=r"unknown key\(s\) \['confidence'\]; known keys are"):
        load_settings(cfg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(formats="yolo,voc"), "formats"),
        (dict(coco_masks="bitmap"), "coco_masks"),
        (dict(conf=2.0), "conf and iou"),
        (dict(split="train=0"), "bad --split"),
    ],
)
def test_bad_values(kwargs, message):
    with pytest.raises(SamlabelError, match=message):
        load_settings(**kwargs)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        assert isinstance(load_settings(path), Settings)


def test_default_yaml_loads_to_exactly_the_defaults():
    """configs/default.yaml gives exactly Settings(): the whole object equal, and each field of the same type
    (``0`` for a float setting's ``0.0``, or a list for a tuple, would compare equal but is not the default)."""
    import dataclasses
    from pathlib import Path

    loaded, defaults = load_settings(Path(__file__).parents[1] / "configs" / "default.yaml"), Settings()
    assert loaded == defaults
    typed = {f.name: (type(getattr(loaded, f.name)), getattr(loaded, f.name)) for f in dataclasses.fields(Settings)}
    assert typed == {
        f.name: (type(getattr(defaults, f.name)), getattr(defaults, f.name)) for f in dataclasses.fields(Settings)
    }


def test_every_setting_is_a_flag():
    """The CLI is generated from Settings: each label setting has its flag."""
    parser = build_parser()
    args = parser.parse_args(["label", "x", "--out", "o", "--max-det", "5", "--coco-masks", "rle", "--conf", "0.3"])
    assert (args.max_det, args.coco_masks, args.conf) == (5, "rle", 0.3)
    import dataclasses

    for command in ("label", "convert"):
        flags = {a.dest for a in parser._subparsers._group_actions[0].choices[command]._actions}
        wanted = {f.name for f in dataclasses.fields(Settings) if command in f.metadata["commands"]}
        assert wanted and wanted <= flags
    assert all(f.metadata["commands"] for f in dataclasses.fields(Settings))  # no setting without a command
    args = parser.parse_args(["convert", "src", "--out", "o", "--link", "--keep-unlabeled"])
    assert (args.link, args.keep_unlabeled, args.resegment) == (True, True, None)


def test_default_yaml_spells_out_every_setting_with_its_default():
    """configs/default.yaml is the documented list of settings: it names each one, with the real default."""
    import dataclasses
    from pathlib import Path

    import yaml

    path = Path(__file__).parents[1] / "configs" / "default.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data) == {f.name for f in dataclasses.fields(Settings)}
    defaults = Settings()
    raw = {f.name: f.default for f in dataclasses.fields(Settings)}
    for key, value in data.items():
        expected = getattr(defaults, key)
        if key == "thresholds":  # a mapping of the thresholds to change: none
            value = QualityThresholds.parse(value)
        # null where the default depends on another setting (formats on layout)
        assert (tuple(value) if isinstance(value, list) else value) == expected or value is raw[key] is None, key
    assert load_settings(path) == defaults


def test_thresholds_are_parsed_once_from_text_or_a_yaml_mapping(tmp_path):
    """A YAML mapping and the CLI's text give the same QualityThresholds; state.json keeps the text form."""
    path = tmp_path / "c.yaml"
    path.write_text("thresholds:\n  min_mask_score: 0.6\n  max-parts: 3\n")
    from_yaml = load_settings(path).thresholds
    assert from_yaml == QualityThresholds(min_mask_score=0.6, max_parts=3)
    assert isinstance(from_yaml.max_parts, int)
    assert load_settings(thresholds="min-mask-score=0.6, max_parts=3").thresholds == from_yaml
    assert Settings(thresholds=from_yaml).thresholds is from_yaml  # no re-parse
    assert str(from_yaml) == "min_mask_score=0.6,max_parts=3" and Settings().to_json()["thresholds"] == ""
    assert Settings(**load_settings(path).to_json()) == load_settings(path)  # state.json's form reads back equal
    path.write_text("thresholds: {max_leak: 2}\n")
    with pytest.raises(SamlabelError, match=r"thresholds: bad entry 'max_leak=2'; expected name=number"):
        load_settings(path)
    with pytest.raises(SamlabelError, match=r"thresholds: bad entry 'min_area=True'"):
        Settings(thresholds={"min_area": True})


LITERALS = {"layout": "Layout", "coco_masks": "CocoMasks", "runtime": "Runtime", "multimask": "Multimask"}


@pytest.mark.parametrize(("name", "literal"), [*LITERALS.items(), ("engine", "Engine")])
def test_option_values_come_from_one_literal(name, literal):
    """Each fixed-value option's CLI choices and check read the Literal in pipeline.options."""
    import dataclasses
    from typing import get_args

    from pipeline import options

    values = get_args(getattr(options, literal))
    assert {f.name: f for f in dataclasses.fields(Settings)}[name].metadata["choices"] == values
    commands = build_parser()._subparsers._group_actions[0].choices
    assert f"({'|'.join(values)})" in " ".join(commands["convert"].format_help().split())
    if name == "runtime":  # review's own --runtime flag too
        assert next(a for a in commands["review"]._actions if a.dest == "runtime").choices == values
    with pytest.raises(SamlabelError, match=rf"{name}: expected one of \[{', '.join(map(repr, values))}\], got 'x'"):
        Settings(**{name: "x"})
