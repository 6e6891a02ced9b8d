"""Stages that are built where they run: one model replica per Ray actor, from the settings.

A stage handed to a run is either a ready object (a ``DetectorStage`` / ``SegmenterStage`` such as the fake
stages of the tests, or any object the user built: pickled to every Ray worker as it is) or a ``Recipe``,
which each worker ``build``s once into its own replica (weights read there, on its own device). ``build``
turns either into the callable stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Settings, generator_options
from pipeline.device import check_device
from pipeline.errors import SamlabelError
from pipeline.types import DetectorStage, GeneratorStage, Instances, SegmenterStage
from pipeline.weights import is_sam3_file
from pipeline.weights import sam3_weights as _sam3_weights


class Recipe:
    """How to build a stage on the worker that runs it; picklable (it holds settings, never a model)."""

    def build(self) -> Any:
        """The stage object: a ``DetectorStage``, ``SegmenterStage`` or ``GeneratorStage``."""
        raise NotImplementedError


def build(stage: Any) -> Any:
    """The callable stage for ``stage``: built from a ``Recipe``, or ``stage`` itself (``None`` stays ``None``)."""
    return stage.build() if isinstance(stage, Recipe) else stage


class DetectorRecipe(Recipe):
    """The ``pipeline.detect.Detector`` the settings describe (``detector``, ``classes``, ``conf`` ...).

    ``names`` (the dataset's class names, needed by the driver before any worker starts) loads the
    weights once on this machine's CPU: a bad file or an unknown ``--classes`` name fails here, in one
    line, not on every worker.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = list(self.build(device="cpu").names)
        return self._names

    def build(self, device: str | None = None) -> DetectorStage:
        from pipeline.detect import Detector

        s = self.settings
        return Detector(
            s.detector,
            classes=s.classes,
            prompts=s.prompts,
            imgsz=s.imgsz,
            device=device or s.device,
            conf=s.conf,
            iou=s.iou,
            max_det=s.max_det,
        )


class SegmenterRecipe(Recipe):
    """The ``pipeline.sam.Segmenter`` the settings describe (``segmenter``, ``sam_arch``, ``runtime`` ...).

    Args:
        settings: the run's settings.
        lazy: ``build`` gives a stage that loads SAM on its first call (after checking ``--device``), so images
            whose masks all come from the source never load its weights.
    """

    def __init__(self, settings: Settings, *, lazy: bool = False) -> None:
        self.settings = settings
        self.lazy = lazy

    def build(self) -> SegmenterStage:
        if self.lazy:
            return LazyStage(SegmenterRecipe(self.settings))
        from pipeline.sam import Segmenter

        s = self.settings
        return Segmenter(
            s.segmenter,
            arch=s.sam_arch,
            device=s.device,
            batch=s.sam_batch,
            runtime=s.runtime,
            cache_dir=s.cache_dir,
            multimask=s.multimask,
        )


def check_segmenter(settings: Settings) -> None:
    """Refuse now, in one line, what would stop the SAM stage when it is built later (on first use, or on Ray
    workers): weights that are neither on disk nor downloadable (SAM 3's never are downloaded), or ``--runtime onnx``
    for a torch-only architecture (SAM 3)."""
    from pipeline.sam.build import resolve_arch
    from pipeline.sam.segmenter import check_runtime
    from pipeline.weights import resolve_weights

    path = resolve_weights(settings.segmenter, flag="--segmenter")
    check_runtime(resolve_arch(path, settings.sam_arch), settings.runtime)


class GeneratorRecipe(Recipe):
    """SAM's automatic mask generator (``pipeline.sam.automatic.MaskGenerator``) the settings describe: the
    ``SegmenterRecipe``'s SAM with ``points_per_side``, ``pred_iou_thresh``, ``stability_thresh`` ...

    ``build(segmenter)`` shares a SAM stage already built (its model, and its embedding of the image it last
    encoded: ``--propose`` does not encode an image twice).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, segmenter=None) -> GeneratorStage:
        from pipeline.sam.automatic import MaskGenerator

        seg = segmenter if segmenter is not None else SegmenterRecipe(self.settings).build()
        return MaskGenerator(seg, generator_options(self.settings))


class EverythingRecipe(Recipe):
    """The instance source of ``--mode everything`` (a ``DetectorStage``): the ``GeneratorRecipe``'s masks, each an
    instance of the one class ``settings.name``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def names(self) -> list[str]:
        return [self.settings.name]

    def build(self, segmenter=None) -> DetectorStage:
        from pipeline.sam.automatic import EverythingDetector

        return EverythingDetector(GeneratorRecipe(self.settings).build(segmenter), name=self.settings.name)


class LazyStage:
    """A segmenter stage built from its recipe on first use (or by :meth:`load`)."""

    def __init__(self, recipe: SegmenterRecipe) -> None:
        self._recipe = recipe
        self._stage: SegmenterStage | None = None

    @property
    def loaded(self) -> bool:
        return self._stage is not None

    def load(self) -> SegmenterStage:
        """The stage, built now if it is not yet (after checking ``--device``)."""
        if self._stage is None:
            check_device(self._recipe.settings.device)
            self._stage = self._recipe.build()
        return self._stage

    def __call__(self, rgb: np.ndarray, instances: Instances) -> Instances:
        return self.load()(rgb, instances)

    def set_image(self, rgb: np.ndarray) -> Any:
        """The loaded SAM's ``set_image``: the automatic mask generator (``--propose``) shares this stage."""
        return self.load().set_image(rgb)  # type: ignore[attr-defined]

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """The loaded SAM's ``predict`` (see :meth:`set_image`)."""
        return self.load().predict(*args, **kwargs)  # type: ignore[attr-defined]


def is_concept_weights(weights: str) -> bool:
    """SAM 3 weights (``sam3.pt``, ``sam3_finetuned.pt`` ...): the detector is a concept model."""
    return is_sam3_file(weights)


class ConceptRecipe(DetectorRecipe):
    """A detector recipe: the ``pipeline.concepts.ConceptStage`` over SAM 3 (``--detector sam3.pt``) or a given
    concept model.

    The ontology (``--prompts``, or ``--classes`` as its synonym) and the exemplars (``--exemplars``, read here,
    once, on the driver) travel with the recipe; each Ray replica builds its own model.

    Args:
        settings: the run's settings.
        model: a ready ``ConceptModel`` (pickled to every replica as it is); ``None``: SAM 3 from ``--detector``.

    Raises:
        SamlabelError: no prompts nor exemplars, a malformed exemplar file, SAM 3 weights not on disk.
    """

    def __init__(self, settings: Settings, *, model: Any = None) -> None:
        from pipeline.concepts.exemplars import attach, read_exemplars
        from pipeline.concepts.ontology import vocabulary

        self.settings = settings
        self.model = model
        ontology = vocabulary(settings)
        exemplars: list = []
        if settings.exemplars is not None:
            ontology, exemplars = attach(read_exemplars(settings.exemplars), ontology)
        if ontology is None:
            raise SamlabelError(
                f"--detector {settings.detector}: a concept model finds what it is asked for: give --prompts "
                "'person, bicycle' (or --exemplars FILE)"
            )
        self.ontology, self.exemplars = ontology, exemplars
        if model is None:
            sam3_weights(settings.detector)

    @property
    def names(self) -> list[str]:
        return list(self.ontology.names)

    def fingerprint(self) -> dict:
        """What the settings do not say but decides the output: the exemplars' pixels, boxes and classes."""
        return {"exemplars": [[e.key, list(e.xyxy), e.name] for e in self.exemplars]} if self.exemplars else {}

    def build(self, device: str | None = None) -> DetectorStage:
        from pipeline.concepts.stage import ConceptStage

        model = self.model
        if model is None:
            from pipeline.concepts.sam3 import Sam3Model  # the SAM 3 backend (pipeline/concepts/sam3.py)

            model = Sam3Model(str(sam3_weights(self.settings.detector)), device=device or self.settings.device)
        return ConceptStage(model, self.ontology, conf=self.settings.conf, exemplars=self.exemplars)


def concept_recipe(detector: Any, settings: Settings) -> ConceptRecipe | None:
    """The concept recipe of a run whose detector is SAM 3 weights (``detector`` None, ``settings.detector`` a
    ``sam3*`` file) or a concept model object (callable, no ``names``); ``None`` for any other detector."""
    if detector is None:
        return ConceptRecipe(settings) if is_concept_weights(settings.detector) else None
    if isinstance(detector, Recipe) or hasattr(detector, "names"):
        return None
    return ConceptRecipe(settings, model=detector)


def sam3_weights(weights: str, *, flag: str = "--detector") -> Path:
    """The SAM 3 weights file, which samlabel never downloads (gated: Meta's SAM licence).

    Raises:
        SamlabelError: not on disk, with where to get it.
    """
    return _sam3_weights(weights, flag=flag)
