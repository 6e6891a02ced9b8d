"""The detector stage: Ultralytics YOLO (incl. YOLO-World) boxes as ``Instances``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipeline.errors import SamlabelError
from pipeline.threads import torch_threads
from pipeline.types import Instances
from pipeline.weights import resolve_weights

if TYPE_CHECKING:
    import torch
    from ultralytics.engine.results import Results

LOGGER = logging.getLogger(__name__)


class Detector:
    """Run an Ultralytics detector on RGB images.

    Attributes:
        names: the dataset's class names, in class-id order. Without ``classes`` these are the
            detector's names; with ``classes`` they are exactly ``classes``, in the given order.
    """

    def __init__(
        self,
        weights: str,
        *,
        classes: Sequence[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        imgsz: int = 640,
        device: str | None = None,
    ) -> None:
        from ultralytics import YOLO

        path = resolve_weights(weights, flag="--detector")
        try:
            self.model = YOLO(str(path), task="detect")
            own = [str(self.model.names[i]) for i in sorted(self.model.names)]  # loads the file, if YOLO did not
        except Exception as e:  # noqa: BLE001 - a bad file surfaces as many exception types inside Ultralytics
            raise SamlabelError(f"--detector {weights}: cannot load it as Ultralytics weights ({e})") from None
        self._kwargs: dict[str, Any] = dict(
            conf=conf, iou=iou, max_det=max_det, imgsz=imgsz, device=device, verbose=False
        )
        self._keep: list[int] | None = None
        self._to_dataset_id: np.ndarray | None = None
        if not classes:
            self.names = own
        elif self.is_world:
            self.model.set_classes(list(classes))
            self.names = list(classes)
        else:
            unknown = [c for c in classes if c not in own]
            if unknown:
                raise SamlabelError(
                    f"--classes {','.join(unknown)}: not among the detector's classes {own}; "
                    "use a YOLO-World detector for free-text classes"
                )
            self._keep = [own.index(c) for c in classes]
            self._to_dataset_id = np.full(len(own), -1, dtype=np.int64)
            self._to_dataset_id[self._keep] = np.arange(len(classes))
            self.names = list(classes)
        self._set_up_predictor()

    def _set_up_predictor(self) -> None:
        """Run once on a blank image now, so that Ultralytics sets its predictor up here and not in the first call.

        Setting up the predictor calls ``select_device``, which sets PyTorch's thread count (to 1 on a 2-core
        machine). Inside the first image's call that made the first image of every run (the first after a
        resume too) run at another thread count than the rest, and the detector's boxes depend on it where
        confidences are near-tied. Set up here, every image runs at ``torch_threads()``'s count.
        """
        with torch_threads():
            self.model.predict(np.zeros((32, 32, 3), dtype=np.uint8), classes=self._keep, **self._kwargs)

    @property
    def is_world(self) -> bool:
        """True for open-vocabulary YOLO-World models, whose classes are text prompts."""
        return type(self.model.model).__name__ == "WorldModel"

    def __call__(self, rgb: np.ndarray) -> Instances:
        """Detect objects in one image.

        Args:
            rgb: uint8 (H, W, 3) RGB image.

        Returns:
            Instances with ``xyxy`` in pixels, dataset ``class_id``, ``confidence`` and ``source_id``
            = detection index (in the detector's confidence order).
        """
        with torch_threads():
            results = self.model.predict(rgb[..., ::-1], classes=self._keep, **self._kwargs)
        boxes = cast("list[Results]", results)[0].boxes  # a list: predict without stream=True
        if boxes is None:
            raise SamlabelError("--detector: the model gave no boxes; give a detection model (task 'detect')")
        class_id = _numpy(boxes.cls).astype(np.int64)
        if self._to_dataset_id is not None:
            class_id = self._to_dataset_id[class_id]
        return Instances(
            xyxy=_numpy(boxes.xyxy),
            class_id=class_id,
            confidence=_numpy(boxes.conf),
        )


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A field of Ultralytics' ``Boxes`` (a tensor, on any device, or already an array) as a NumPy array."""
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()
