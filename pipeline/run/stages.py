"""Stages that are built where they run: one model replica per Ray actor, from the settings.

A stage handed to a run is either a ready object (a ``DetectorStage`` / ``SegmenterStage`` such as the fake
stages of the tests, or any object the user built: pickled to every Ray worker as it is) or a ``Recipe``,
which each worker ``build``s once into its own replica (weights read there, on its own device). ``build``
turns either into the callable stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.device import check_device
from pipeline.types import DetectorStage, Instances, SegmenterStage


class Recipe:
    """How to build a stage on the worker that runs it; picklable (it holds settings, never a model)."""

    def build(self) -> Any:
        """The stage object: a ``DetectorStage`` or a ``SegmenterStage``."""
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
