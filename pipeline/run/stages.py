"""Stages that are built where they run: one model replica per Ray actor, from the settings.

A stage handed to a distributed run is either a ready object (a callable such as the fake stages of the
tests, or any object the user built: pickled to every worker as it is) or a ``Recipe``, which each
worker ``build``s once into its own replica (weights read there, on its own device). ``build`` turns
either into the callable stage.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings


class Recipe:
    """How to build a stage on the worker that runs it; picklable (it holds settings, never a model)."""

    def build(self) -> Any:
        """The stage object: a callable ``rgb -> Instances`` (detector) or ``(rgb, Instances) -> Instances``."""
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

    def build(self, device: str | None = None) -> Any:
        from pipeline.detect import Detector

        s = self.settings
        return Detector(
            s.detector,
            classes=s.classes,
            conf=s.conf,
            iou=s.iou,
            max_det=s.max_det,
            imgsz=s.imgsz,
            device=device or s.device,
        )
