"""Where a dataset's files lie: the one place that knows the output layouts (writers, report, validate, readers).

``roboflow`` (the default), Roboflow's export layout, which Ultralytics trains on as it is::

    data.yaml
    <split>/images/<name>
    <split>/labels/<stem>.txt                 YOLO-seg
    <split>/_annotations.coco.json            COCO; file_name = <name>

``coco``, the layout COCO tooling expects (Datumaro's ``coco_instances``, detectron2, MMDetection)::

    annotations/instances_<split>.json        COCO; file_name = <name>, relative to images/<split>/
    images/<split>/<name>
    labels/<split>/<stem>.txt                 YOLO-seg, only when asked for (Ultralytics finds labels/<split>
    data.yaml                                 for images/<split>; data.yaml only with them)

Split names are samlabel's in both (``train``, ``valid``, ``test``). Paths here are POSIX, relative to the dataset.
Every method checks the split (one of ``SPLITS``) and file name (one plain component, :mod:`pipeline.safepath`) it
is given, so a name read from a dataset cannot make a path that leaves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline import options, safepath
from pipeline.formats.coco import ROBOFLOW_NAME
from pipeline.formats.data_yaml import SPLITS, canonical_split

LAYOUTS = options.LAYOUTS

_COCO_FILE = re.compile(r"^instances_(.+)\.json$")

#: samlabel's run state inside a dataset folder.
STATE_DIR = ".samlabel"


@dataclass(frozen=True)
class Layout:
    """The relative paths of one layout's files; ``name`` is ``roboflow`` or ``coco``."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in LAYOUTS:
            raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {self.name!r}")

    def images_dir(self, split: str) -> str:
        """The folder of a split's images (COCO ``file_name`` is relative to it in both layouts)."""
        safepath.split(split, what="split")
        return f"{split}/images" if self.name == "roboflow" else f"images/{split}"

    def labels_dir(self, split: str) -> str:
        """The folder of a split's YOLO label files (Ultralytics' rule: the last ``images`` made ``labels``)."""
        safepath.split(split, what="split")
        return f"{split}/labels" if self.name == "roboflow" else f"labels/{split}"

    def coco_file(self, split: str) -> str:
        """A split's COCO instances file."""
        safepath.split(split, what="split")
        return f"{split}/{ROBOFLOW_NAME}" if self.name == "roboflow" else f"annotations/instances_{split}.json"

    def image(self, split: str, name: str) -> str:
        """An image's path in the dataset."""
        safepath.component(name, what=f"{split} image file name")
        return f"{self.images_dir(split)}/{name}"

    def label_file(self, split: str, name: str) -> str:
        """The YOLO label file of the image ``name``."""
        safepath.component(name, what=f"{split} image file name")
        return f"{self.labels_dir(split)}/{PurePosixPath(name).stem}.txt"

    @property
    def writes_data_yaml_always(self) -> bool:
        """Roboflow's layout always has a data.yaml (its names); the COCO layout only beside YOLO labels."""
        return self.name == "roboflow"


ROBOFLOW = Layout("roboflow")
COCO = Layout("coco")

#: What samlabel may have written at a dataset's top level, in any layout (``--overwrite`` clears these).
WRITTEN = (*SPLITS, "images", "labels", "annotations", "data.yaml", "report.json", "report.html")


def get(name: str) -> Layout:
    """The layout called ``name``.

    Raises:
        ValueError: not one of ``LAYOUTS``.
    """
    return Layout(name)


def detect(root: Path) -> Layout | None:
    """The layout of the dataset at ``root`` from its files: COCO if ``annotations/instances_*.json`` sit beside
    ``images/``, Roboflow if a split folder holds ``images/``; None when neither."""
    if coco_splits(root):
        return COCO
    if any((root / s / "images").is_dir() for s in (*SPLITS, "val")):
        return ROBOFLOW
    return None


def coco_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """A COCO-layout dataset's splits: split -> (instances json, its image folder), for the splits whose image
    folder exists (``val`` read as ``valid``)."""
    out: dict[str, tuple[Path, Path]] = {}
    annotations = root / "annotations"
    if not annotations.is_dir() or not (root / "images").is_dir():
        return out
    for path in sorted(annotations.iterdir()):
        m = _COCO_FILE.match(path.name)
        if m and path.is_file() and (root / "images" / m.group(1)).is_dir():
            out.setdefault(canonical_split(m.group(1)), (path, root / "images" / m.group(1)))
    return out


def holds_dataset(folder: Path) -> str | None:
    """Why ``folder`` is a dataset's root (samlabel's run state, data.yaml with split folders, or the COCO layout),
    or None; a walk for input images does not go into one."""
    if (folder / STATE_DIR).is_dir():
        return f"samlabel run state {STATE_DIR}/"
    if (folder / "data.yaml").is_file() and any((folder / s / "images").is_dir() for s in (*SPLITS, "val")):
        return "data.yaml and split folders"
    if coco_splits(folder):
        return "annotations/instances_<split>.json and images/<split>/"
    return None
