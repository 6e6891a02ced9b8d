"""``--exemplars``: a few images with boxes of wanted objects ("more like these"), read as untrusted input.

The file is a small dataset in a layout ``samlabel convert`` reads (``pipeline.sources.read_dataset``: a COCO
json with its images beside it, a YOLO ``images/`` + ``labels/`` folder with ``classes.txt``, a data.yaml
folder ...); classes are matched to the run's classes by name.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.concepts.ontology import Ontology, Phrase
from pipeline.errors import ImageReadError, SamlabelError
from pipeline.images import load_image

LOGGER = logging.getLogger(__name__)

#: At most this many exemplar images: each is held in memory (and sent to every Ray replica).
MAX_IMAGES = 50


@dataclass(frozen=True, eq=False)
class Exemplar:
    """One example box of a wanted object, in its own image.

    Attributes:
        rgb: uint8 (H, W, 3) the upright image the box is in (EXIF applied, as every labelled image).
        xyxy: (x_min, y_min, x_max, y_max) the box in absolute pixels of ``rgb``.
        name: its class name.
        phrase: the phrase whose answer it refines (its class's first phrase); a concept model reports the
            objects it finds from this exemplar under that phrase.
        source: the image file, for messages.
    """

    rgb: np.ndarray
    xyxy: tuple[float, float, float, float]
    name: str
    phrase: str = ""
    source: str = ""

    @property
    def key(self) -> str:
        """The digest of its image's pixels (``image_key``): which labelled image it is, whatever its path."""
        return image_key(self.rgb)


def image_key(rgb: np.ndarray) -> str:
    """A digest of an image's decoded pixels and shape."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def read_exemplars(path: str | Path) -> list[Exemplar]:
    """The boxes of the exemplar dataset at ``path``, in its order (``phrase`` not yet set: ``attach``).

    Raises:
        SamlabelError: no such file, a layout not recognised, too many images, an unreadable image, no box.
    """
    from pipeline.sources import read_dataset
    from pipeline.sources.labels import to_instances

    path = Path(path)
    if not path.exists():
        raise SamlabelError(f"--exemplars {path}: no such file or folder")
    if path.is_file() and path.suffix.lower() != ".json":
        raise SamlabelError(
            f"--exemplars {path}: expected a COCO .json (images beside it) or a YOLO folder (images/, labels/, "
            "classes.txt)"
        )
    images = path.parent if path.is_file() else None
    try:
        ds = read_dataset(path, images=images)
    except SamlabelError as e:
        raise SamlabelError(f"--exemplars: {e}") from None
    for problem in ds.problems:
        LOGGER.warning("--exemplars %s: %s (%s)", problem.where, problem.problem, problem.action)
    if len(ds.items) > MAX_IMAGES:
        raise SamlabelError(
            f"--exemplars {path}: {len(ds.items)} images; give a few (at most {MAX_IMAGES}) with boxes of the objects wanted"
        )
    out: list[Exemplar] = []
    for item in ds.items:
        assert item.labels is not None  # read_dataset: every kept item has its labels
        try:
            image = load_image(item.path)
        except ImageReadError as e:
            raise SamlabelError(f"--exemplars: {e}") from None
        boxes = to_instances(item.labels, image.hw)
        for xyxy, c in zip(boxes.xyxy, boxes.class_id, strict=True):
            x0, y0, x1, y1 = (float(v) for v in xyxy)
            out.append(Exemplar(rgb=image.rgb, xyxy=(x0, y0, x1, y1), name=ds.names[int(c)], source=str(item.path)))
    if not out:
        raise SamlabelError(f"--exemplars {path}: no boxes found; give a few images with boxes of the objects wanted")
    return out


def attach(exemplars: Sequence[Exemplar], ontology: Ontology | None) -> tuple[Ontology, list[Exemplar]]:
    """The run's ontology and the exemplars, each tied to its class's first phrase.

    Without ``--prompts`` the classes are the exemplars' class names (in their first-seen order), each found by
    a phrase equal to its name. With ``--prompts`` every exemplar's class must be one of its classes.

    Raises:
        SamlabelError: an exemplar class that is not among the ``--prompts`` classes.
    """
    if ontology is None:
        names = list(dict.fromkeys(e.name for e in exemplars))
        ontology = Ontology(tuple(names), tuple(Phrase(text=n, class_id=i) for i, n in enumerate(names)))
    unknown = sorted({e.name for e in exemplars} - set(ontology.names))
    if unknown:
        raise SamlabelError(
            f"--exemplars: class(es) {unknown} not among the --prompts classes {list(ontology.names)}; "
            "add them to --prompts or rename them in the exemplar file"
        )
    first = {c: ontology.phrases_of(c)[0].text for c in range(len(ontology.names))}
    return ontology, [replace(e, phrase=first[ontology.names.index(e.name)]) for e in exemplars]
