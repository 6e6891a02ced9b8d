"""The detector stage: Ultralytics YOLO (incl. the open-vocabulary YOLO-World and YOLOE) boxes as ``Instances``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipeline.concepts.ontology import Ontology
from pipeline.errors import SamlabelError
from pipeline.threads import torch_threads
from pipeline.types import DROP_REASON, Instances
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
        prompts: Ontology | None = None,
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
        self.ontology: Ontology | None = None
        if self.is_open_vocabulary:
            self.ontology = prompts if prompts is not None else (Ontology.parse(list(classes)) if classes else None)
            if prompts is not None and classes:
                raise SamlabelError(
                    "--prompts and --classes both given; on an open-vocabulary detector they mean the same: give one"
                )
        elif prompts is not None:
            raise SamlabelError(
                f"--prompts: --detector {weights} is a closed-set detector (classes {own}); give an open-vocabulary "
                "one (sam3.pt, yoloe-11s-seg.pt, yolov8s-worldv2.pt), or --classes to keep some of its classes"
            )
        if self.ontology is not None:
            self._set_vocabulary(self.ontology.texts, weights)
            self._kwargs["conf"] = min(self.ontology.thresholds(conf))  # each phrase's own threshold after
            self._phrase_conf = np.array(self.ontology.thresholds(conf), dtype=np.float32)
            self.names = list(self.ontology.names)
        elif not classes:
            self.names = own
        else:
            unknown = [c for c in classes if c not in own]
            if unknown:
                raise SamlabelError(
                    f"--classes {','.join(unknown)}: not among the detector's classes {own}; "
                    "use an open-vocabulary detector (YOLOE, YOLO-World, sam3.pt) for free-text classes"
                )
            self._keep = [own.index(c) for c in classes]
            self._to_dataset_id = np.full(len(own), -1, dtype=np.int64)
            self._to_dataset_id[self._keep] = np.arange(len(classes))
            self.names = list(classes)
        self._set_up_predictor()

    def _set_vocabulary(self, texts: list[str], weights: str) -> None:
        """The phrases become the model's classes (their text embeddings, computed once, here).

        Raises:
            SamlabelError: offline without the text encoder (named), or the model refuses a vocabulary.
        """
        problem = text_encoder_problem(self.model)
        if problem is not None:
            raise SamlabelError(f"--detector {weights}: turning the prompts into its vocabulary needs {problem}")
        try:
            with torch_threads():
                if self.is_world:
                    self.model.set_classes(list(texts))
                else:  # YOLOE: the text embeddings are computed once, then the head keeps them
                    self.model.set_classes(list(texts), self.model.get_text_pe(list(texts)))
        except Exception as e:  # noqa: BLE001 - downloads, CLIP and asserts inside Ultralytics all land here
            raise SamlabelError(
                f"--detector {weights}: cannot set its vocabulary to {texts} ({type(e).__name__}: {e}); a prompt-free "
                "YOLOE (*-pf.pt) takes no vocabulary: use a text-prompt one (yoloe-11s-seg.pt)"
            ) from None

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

    @property
    def is_open_vocabulary(self) -> bool:
        """True for YOLO-World and YOLOE (text-prompt) models: ``--prompts`` (or ``--classes``) is their vocabulary."""
        from ultralytics.nn.tasks import YOLOEModel

        return self.is_world or isinstance(self.model.model, YOLOEModel)

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
        found = Instances(xyxy=_numpy(boxes.xyxy), class_id=class_id, confidence=_numpy(boxes.conf))
        return found if self.ontology is None else self._by_phrase(found)

    def _by_phrase(self, found: Instances) -> Instances:
        """Class ids (phrase indices) to the phrases' classes, each phrase's threshold applied, and a box found
        by two phrases kept once (box IoU >= ``SAME_OBJECT_IOU``; the other dropped with the reason)."""
        from pipeline.concepts.stage import SAME_OBJECT_IOU, rank, resolve
        from pipeline.quality import box_iou

        assert self.ontology is not None  # called only with a vocabulary
        phrase = found.class_id
        found = found[found.confidence >= self._phrase_conf[phrase]]
        phrase = found.class_id
        classes = np.array([p.class_id for p in self.ontology.phrases], dtype=np.int64)
        texts = np.empty(len(found), dtype=object)
        texts[:] = [self.ontology.phrases[k].text for k in phrase]
        found = rank(found.replace(class_id=classes[phrase]).with_extras(phrase=texts))
        boxes = found.xyxy
        reasons = resolve(found, self.ontology.names, lambda i, j: box_iou(boxes[i], boxes[j]) >= SAME_OBJECT_IOU)
        return found.with_extras(**{DROP_REASON: reasons})


def text_encoder_problem(model: Any) -> str | None:
    """What an open-vocabulary model's text encoder lacks to load offline (named, with where it goes), or
    ``None``: on disk, or online (Ultralytics downloads it then).

    YOLO-World embeds text with OpenAI CLIP ViT-B/32 (``<weights_dir>/clip/ViT-B-32.pt``), YOLOE with MobileCLIP
    (``mobileclip_blt.ts`` in the weights folder); both import ``clip``, Ultralytics' CLIP fork.
    """
    import importlib.util
    from pathlib import Path

    from ultralytics.utils import is_online

    from pipeline.weights import ultralytics_weights_dir

    if is_online():
        return None
    folder = ultralytics_weights_dir()
    variant = "clip:ViT-B/32" if type(model.model).__name__ == "WorldModel" else getattr(model.model, "text_model", "")
    base = str(variant).split(":")[0]
    if base == "clip":
        places = [folder / "clip" / "ViT-B-32.pt"]
    else:
        name = "mobileclip2_b.ts" if base == "mobileclip2" else "mobileclip_blt.ts"
        places = [Path(name), folder / name]
    if not any(p.is_file() for p in places):
        return (
            f"its text encoder {places[-1].name}, not found in {places[-1].parent} and not downloadable offline; "
            f"download it where you have internet (Ultralytics fetches it on first use) and copy it to {places[-1]}"
        )
    if "clip" not in sys.modules and importlib.util.find_spec("clip") is None:
        return "the package clip (Ultralytics' CLIP fork), not installed and not installable offline: pip install git+https://github.com/ultralytics/CLIP.git"
    return None


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A field of Ultralytics' ``Boxes`` (a tensor, on any device, or already an array) as a NumPy array."""
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()
