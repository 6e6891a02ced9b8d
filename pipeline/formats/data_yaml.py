"""Ultralytics' data.yaml (class names, split folders) and the split names samlabel uses."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import SamlabelError

#: Split folder names, in the order data.yaml lists them.
SPLITS = ("train", "valid", "test")

#: data.yaml key -> split folder, as samlabel writes them (Roboflow's layout).
YAML_KEYS = {"train": "train", "val": "valid", "test": "test"}


def canonical_split(name: str) -> str:
    """A split name as samlabel writes it: ``val`` is ``valid``; others unchanged."""
    return "valid" if name == "val" else name


def parse_names(raw, where) -> list[str]:
    """Class names from data.yaml's ``names``: a list, or an ``id: name`` mapping with ids 0..N-1.

    Raises:
        SamlabelError: missing, empty, or ids that are not 0..N-1.
    """
    if isinstance(raw, dict):
        keys = sorted(int(k) for k in raw)
        if keys != list(range(len(keys))):
            raise SamlabelError(f"{where}: names ids must be 0..N-1, got {keys}")
        return [str(raw[k] if k in raw else raw[str(k)]) for k in keys]
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    raise SamlabelError(f"{where}: no class names (expected 'names:' as a list or an id: name mapping)")


def split_entries(data: dict) -> list[tuple[str, str, list[str]]]:
    """``(key, split, entries)`` for each split data.yaml lists (``val`` and ``valid`` both give ``valid``; the first wins)."""
    out, seen = [], set()
    for key in ("train", "val", "valid", "test"):
        split = canonical_split(key)
        if not data.get(key) or split in seen:
            continue
        seen.add(split)
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        out.append((key, split, [str(e) for e in entries]))
    return out


def base_dir(data: dict, yaml_dir: Path) -> Path:
    """The folder split entries are relative to: ``path`` (absolute, or relative to data.yaml), else data.yaml's folder."""
    if data.get("path"):
        p = Path(str(data["path"]))
        return p if p.is_absolute() else yaml_dir / p
    return yaml_dir


def split_candidates(entry: str, base: Path, yaml_dir: Path) -> list[Path]:
    """Where a split entry may point, in the order Ultralytics' ``check_det_dataset`` tries them.

    Roboflow writes ``../train/images`` beside data.yaml; Ultralytics then also tries it without ``../``.
    """
    p = Path(entry)
    candidates = [p] if p.is_absolute() else [base / p, yaml_dir / p]
    if not p.is_absolute() and entry.startswith("../"):
        candidates += [base / entry[3:], yaml_dir / entry[3:]]
    return list(dict.fromkeys(candidates))


def resolve_split_dir(entry: str, base: Path, yaml_dir: Path) -> Path | None:
    """The image folder (or ``.txt`` list of images) a split entry points to, or None."""
    for c in split_candidates(entry, base, yaml_dir):
        if c.is_dir() or (c.is_file() and c.suffix == ".txt"):
            return Path(os.path.normpath(c.absolute()))  # not resolve(): a symlinked images/ keeps its name
    return None


def to_data_yaml(names: Sequence[str], splits: Sequence[str], images_dir: Callable[[str], str] | None = None) -> dict:
    """data.yaml for the splits that have images. Ultralytics needs both ``train`` and ``val``: a missing one
    points at the other split (as Roboflow does), so a dataset that is all train still trains and validates.

    There is no ``path`` key: Ultralytics then resolves the split folders against data.yaml's own folder.
    ``images_dir`` gives a split's image folder (``pipeline.formats.layout``; default ``<split>/images``).
    """
    data = {"nc": len(names), "names": list(names)}
    if not splits:
        return data
    images_dir = images_dir or (lambda split: f"{split}/images")
    folders = {key: images_dir(split) for key, split in YAML_KEYS.items() if split in splits}
    data["train"] = folders.get("train") or folders.get("val") or folders["test"]
    data["val"] = folders.get("val") or folders.get("train") or folders["test"]
    if "test" in folders:
        data["test"] = folders["test"]
    return data


def missing_note(data: dict, splits: Sequence[str]) -> str | None:
    """What ``to_data_yaml`` filled in for a missing train or val split, for the report; None if nothing."""
    missing = [k for k in ("train", "val") if YAML_KEYS[k] not in splits]
    if not splits or not missing:
        return None
    other = {"train": "valid", "val": "train"}[missing[0]]  # the fallback to_data_yaml took, in its order
    target = other if other in splits else "test"
    return (
        f"no {' or '.join(missing)} images: data.yaml points {' and '.join(missing)} at "
        f"{target} (Ultralytics needs both train and val)"
    )
