"""The concept stage: a ``ConceptModel`` (SAM 3) asked for every phrase of every class, as a detector stage.

One model call per image with all phrases; each phrase's instances are kept at or above its threshold (its
own, else ``--conf``) and land in the phrase's class. One object found more than once is kept once:

- "the same object" means mask IoU >= ``SAME_OBJECT_IOU`` (0.7, the IoU at which Ultralytics' NMS, and
  samlabel's ``--iou`` default, calls two detections one; lower than the ``duplicate`` quality flag's 0.8,
  so what this keeps is not flagged as a duplicate of what it dropped);
- instances are taken by descending score (ties: phrase order, then the model's order); one that is the same
  object as an instance already kept is dropped, with the reason: "found again by phrase ..." within its
  class, "kept as class ... (higher score)" across classes. report.json lists every dropped instance.

An image that is itself an exemplar image (same pixels) keeps its exemplar boxes as instances of their class
(masks from the SAM stage, ``--segmenter``), and what the model finds on them is dropped as found again.

The masks are the model's, so the SAM stage has nothing to do for the model's instances; their boxes
(``xyxy``, the masks' boxes) are the prompt boxes of the quality signals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline.concepts import exemplar as prompt
from pipeline.concepts.exemplars import Exemplar, image_key
from pipeline.concepts.ontology import Ontology
from pipeline.errors import SamlabelError
from pipeline.masks import CropMask
from pipeline.quality import box_iou
from pipeline.types import DROP_REASON, ConceptModel, Instances, stack_instances

#: Two instances whose masks have at least this IoU are one object (see the module doc).
SAME_OBJECT_IOU = 0.7

#: ``extras["phrase"]`` of an instance that is an exemplar's own box.
EXEMPLAR_PHRASE = "(exemplar box)"


class ConceptStage:
    """Detector stage over a concept model: ``names`` = the ontology's classes; ``__call__(rgb) -> Instances``.

    Args:
        model: the concept model (``pipeline.types.ConceptModel``).
        ontology: classes and phrases.
        conf: the threshold of phrases without their own.
        exemplars: example boxes (``pipeline.concepts.exemplars.attach`` tied them to phrases), passed to
            every model call.
        same_object_iou: mask IoU from which two instances are one object.
    """

    def __init__(
        self,
        model: ConceptModel,
        ontology: Ontology,
        *,
        conf: float,
        exemplars: Sequence[Exemplar] = (),
        same_object_iou: float = SAME_OBJECT_IOU,
    ) -> None:
        self.model = model
        self.ontology = ontology
        self.thresholds = ontology.thresholds(conf)
        self.exemplars = tuple(exemplars)
        self.same_object_iou = same_object_iou
        self._own: dict[str, list[Exemplar]] = {}
        for e in self.exemplars:
            self._own.setdefault(e.key, []).append(e)
        self.prompts = model_exemplars(self.exemplars)

    @property
    def names(self) -> list[str]:
        return list(self.ontology.names)

    def __call__(self, rgb: np.ndarray) -> Instances:
        """Every object of every class in ``rgb`` (uint8 (H, W, 3)).

        Returns:
            Instances by descending score: ``class_id`` the phrase's class, ``confidence`` the model's score,
            masks filled (``None`` only for an exemplar's own box), ``source_id`` the position in the model's
            answers (all phrases, in order), ``extras["phrase"]`` the phrase that found it, and
            ``extras[DROP_REASON]`` (``None``: kept) for an object found again.
        """
        texts = self.ontology.texts
        answers = self.model(rgb, texts, self.prompts)
        if len(answers) != len(texts):
            raise SamlabelError(f"concept model: {len(answers)} answers for {len(texts)} phrases (one per phrase)")
        parts, start = [], 0
        for k, (phrase, found) in enumerate(zip(self.ontology.phrases, answers, strict=True)):
            if any(m is None for m in found.masks):
                raise SamlabelError(f"concept model: an instance of phrase {phrase.text!r} has no mask")
            ids = start + np.arange(len(found))
            start += len(found)
            keep = found.confidence >= self.thresholds[k]
            found = found.replace(class_id=np.full(len(found), phrase.class_id), source_id=ids)
            parts.append(found[keep].with_extras(phrase=_objects([phrase.text] * int(keep.sum()))))
        own = self._own_boxes(rgb, start)
        found = stack_instances([own, *parts])
        if not len(found):
            return found
        found = rank(found)  # exemplar boxes (NaN: from a person) first, then by score
        reasons = resolve(found, self.ontology.names, lambda i, j: self._same(found, i, j))
        return found.with_extras(**{DROP_REASON: reasons})

    def _own_boxes(self, rgb: np.ndarray, start: int) -> Instances:
        """The exemplar boxes drawn on this very image, as instances without masks."""
        own = self._own.get(image_key(rgb), []) if self._own else []
        if not own:
            return Instances.empty()
        return Instances(
            xyxy=np.array([e.xyxy for e in own], dtype=np.float32),
            class_id=np.array([self.ontology.names.index(e.name) for e in own]),
            source_id=start + np.arange(len(own)),
            extras={"phrase": _objects([EXEMPLAR_PHRASE] * len(own))},
        )

    def _same(self, found: Instances, i: int, j: int) -> bool:
        a, b = found.masks[i], found.masks[j]
        if a is None or b is None:  # an exemplar's own box (no mask yet): the boxes decide
            box_a = found.xyxy[i] if a is None else a.xyxy
            box_b = found.xyxy[j] if b is None else b.xyxy
            return box_iou(box_a, box_b) >= self.same_object_iou
        return crop_iou(a, b) >= self.same_object_iou


def rank(found: Instances) -> Instances:
    """``found`` by descending confidence, NaN (an exemplar box, from a person) first; ties keep their order."""
    return found[np.lexsort((np.arange(len(found)), -np.nan_to_num(found.confidence, nan=np.inf)))]


def resolve(found: Instances, names: Sequence[str], same: Callable[[int, int], bool]) -> np.ndarray:
    """Per instance of ``found`` (ranked: ``rank``), ``None`` to keep it, or why it is dropped: it is ``same``
    object as one kept before it (within its class: found again; across classes: kept in the other class).

    Args:
        found: ranked instances with ``extras["phrase"]``, the phrase that found each.
        names: class names.
        same: ``same(i, j)``: instances i and j are one object.
    """
    reasons = _objects([None] * len(found))
    kept: list[int] = []
    phrases = found.extras["phrase"]
    for i in range(len(found)):
        j = next((j for j in kept if same(i, j)), None)
        if j is None:
            kept.append(i)
            continue
        by = "an exemplar box" if phrases[j] == EXEMPLAR_PHRASE else f"phrase {phrases[j]!r}"
        what = f"same object as instance {int(found.source_id[j])} ({by}"
        if found.class_id[i] == found.class_id[j]:
            reasons[i] = f"found again by phrase {phrases[i]!r}: {what}, class {names[found.class_id[j]]!r})"
        else:
            score = "" if np.isnan(found.confidence[j]) else f", score {found.confidence[j]:.3f}"
            reasons[i] = (
                f"also found as class {names[found.class_id[i]]!r} by phrase {phrases[i]!r} "
                f"(score {found.confidence[i]:.3f}): {what}{score}), kept as class {names[found.class_id[j]]!r}"
            )
    return reasons


def crop_iou(a: CropMask, b: CropMask) -> float:
    """Mask IoU of two crop masks in one image (0.0 when both are empty), computed on their crops."""
    ax0, ay0, ax1, ay1 = a.xyxy
    bx0, by0, bx1, by1 = b.xyxy
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    inter = 0
    if x1 > x0 and y1 > y0:
        wa = a.bits[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
        wb = b.bits[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
        inter = int(np.count_nonzero(wa & wb))
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def model_exemplars(exemplars: Sequence[Exemplar]) -> tuple[prompt.Exemplar, ...]:
    """The example boxes read from ``--exemplars`` as a concept model takes them: one
    ``pipeline.concepts.exemplar.Exemplar`` per image and phrase, holding all its boxes and its image (built once,
    so a model encodes each exemplar image once per run: the same objects are passed on every call)."""
    grouped: dict[tuple[str, str], list[Exemplar]] = {}
    for e in exemplars:
        grouped.setdefault((e.key, e.phrase), []).append(e)
    return tuple(
        prompt.Exemplar(phrase=phrase, xyxy=np.array([e.xyxy for e in group], dtype=np.float32), image=group[0].rgb)
        for (_, phrase), group in grouped.items()
    )
