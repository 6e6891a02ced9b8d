"""The SAM stage as the review app uses it: one cached embedding per open image, then cheap prompt decodes.

Everything the review app asks of SAM goes through :class:`SamSession`, written against the prompt API
of :mod:`pipeline.sam` (``Segmenter.set_image`` once, ``Segmenter.predict(boxes, points, point_labels,
mask_input, multimask)`` per click). Tests inject any object with the same three methods.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from pipeline.errors import SamlabelError
from pipeline.masks import CropMask
from pipeline.options import Runtime
from pipeline.quality import stability_from_logits

#: Embeddings kept (an image's is ~4 MB for every SAM-1 size): the open image, the one before, the next ones.
EMBEDDINGS = 4

#: Side of SAM's low-resolution mask logits (``pipeline.sam.prompts.LOWRES``): 1/4 of its 1024 px input.
LOWRES = 256
SAM_INPUT = 1024

#: Logit given to mask / background pixels of a mask turned into a mask input (micro-sam's choice:
#: the inverse sigmoid of 1 - 1e-3).
MASK_LOGIT = float(np.log((1 - 1e-3) / 1e-3))


class Candidate(NamedTuple):
    """One mask SAM proposes for a prompt.

    Attributes:
        mask: the mask at image resolution.
        score: SAM's predicted IoU.
        stability: IoU of the mask at logit threshold +1 and -1, on the low-resolution logits (NaN where not
            computed).
        logits: the low-resolution logits; passed back as ``mask_input`` they refine this very mask.
    """

    mask: CropMask
    score: float
    stability: float
    logits: Any


class SamSession:
    """A ``pipeline.sam.Segmenter`` with an LRU of image embeddings; safe to call from several threads.

    Args:
        segmenter: a ``pipeline.sam.Segmenter`` (or anything with its ``set_image`` / ``predict``).
        embeddings: how many image embeddings to keep.
    """

    def __init__(self, segmenter: Any, *, embeddings: int = EMBEDDINGS) -> None:
        self.segmenter = segmenter
        self.capacity = max(1, int(embeddings))
        self._embeddings: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # one model: encodes and decodes take turns

    @classmethod
    def load(
        cls,
        weights: str | Path,
        *,
        arch: str | None = None,
        device: str | None = None,
        runtime: Runtime = "auto",
        cache_dir: str | Path | None = None,
    ) -> SamSession:
        """Build the SAM stage (``pipeline.sam.Segmenter``) for these weights.

        Raises:
            SamlabelError: this install has no prompt-capable SAM stage, or the weights cannot be loaded.
        """
        try:
            from pipeline.sam import Segmenter
        except ImportError as e:
            raise SamlabelError(f"this samlabel has no SAM prompt API (pipeline.sam: {e})") from None
        return cls(Segmenter(weights, arch=arch, device=device, runtime=runtime, cache_dir=cache_dir))

    def embed(self, image_id: str, rgb: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Encode an image once (``rgb``: uint8 (H, W, 3), or a function that reads it, called only if needed)."""
        with self._lock:
            if image_id in self._embeddings:
                self._embeddings.move_to_end(image_id)
                return
            embedding = self.segmenter.set_image(rgb() if callable(rgb) else rgb)
            self._embeddings[image_id] = embedding
            while len(self._embeddings) > self.capacity:
                self._embeddings.popitem(last=False)

    def has(self, image_id: str) -> bool:
        return image_id in self._embeddings

    def predict(
        self,
        image_id: str,
        *,
        box: np.ndarray | None,
        points: np.ndarray | None,
        point_labels: np.ndarray | None,
        mask_input: Any = None,
        multimask: bool,
    ) -> list[Candidate]:
        """SAM's candidates for one prompt on an embedded image (3 with ``multimask``, else 1).

        Args:
            image_id: an image given to :meth:`embed`.
            box: float (4,) xyxy in image pixels, or None.
            points: float (P, 2) xy in image pixels, or None.
            point_labels: int (P,): 1 positive, 0 negative.
            mask_input: low-resolution logits (256, 256): a candidate's ``logits`` or :meth:`mask_input`'s.
            multimask: three candidates (SAM's answer to an ambiguous prompt) instead of one.

        Raises:
            KeyError: the image is not embedded (call :meth:`embed` first).
        """
        with self._lock:
            embedding = self._embeddings[image_id]
            pred = self.segmenter.predict(
                embedding,
                boxes=None if box is None else np.asarray(box, dtype=np.float32).reshape(1, 4),
                points=None if points is None else np.asarray(points, dtype=np.float32).reshape(1, -1, 2),
                point_labels=None if point_labels is None else np.asarray(point_labels).reshape(1, -1),
                mask_input=None if mask_input is None else np.asarray(mask_input, dtype=np.float32)[None],
                multimask=multimask,
            )
            t = float(pred.threshold)
            out = []
            for k in range(pred.scores.shape[1]):
                (mask,) = pred.masks_at(0, (t,), k=k)
                logits = pred.logits[0, k].detach().float().cpu().numpy()
                # on the 256 x 256 logits, not at image size: one upsampling per candidate instead of three
                stability = float(stability_from_logits(logits, threshold=t))
                out.append(Candidate(mask, float(pred.scores[0, k]), stability, logits))
            return out

    def mask_input(self, mask: CropMask, hw: tuple[int, int]) -> np.ndarray:
        """A mask SAM did not make in this session as low-resolution logits, to prompt SAM with it.

        As micro-sam does: the mask in the model's low-resolution frame (the profile's: letterboxed, longest
        side 256, content top left; MedSAM: stretched to 256 x 256), area-averaged, as logits of +-6.9.
        """
        profile = self.segmenter.profile
        return mask_logits(
            mask, hw, scale_xy=profile.scale_xy(hw), input_size=profile.input_size, lowres=profile.lowres
        )


def mask_logits(
    mask: CropMask,
    hw: tuple[int, int],
    *,
    scale_xy: tuple[float, float] | None = None,
    input_size: int = SAM_INPUT,
    lowres: int = LOWRES,
) -> np.ndarray:
    """float32 (lowres, lowres) logits of ``mask`` (image of size ``hw``) in SAM's low-resolution frame.

    Args:
        scale_xy: encoder-input pixels per image pixel along x and y (``Profile.scale_xy``); None: the
            letterbox frame (one ratio, ``input_size / max(hw)``).
        input_size, lowres: the sides of the encoder input and of the logits (``Profile.input_size`` and
            ``Profile.lowres``: 1024 and 256; SAM 3 1008 and 288).
    """
    sx, sy = scale_xy if scale_xy is not None else (input_size / max(hw),) * 2
    rx, ry = sx * lowres / input_size, sy * lowres / input_size
    out = np.full((lowres, lowres), -MASK_LOGIT, dtype=np.float32)
    if mask.area == 0:
        return out
    x0, y0, x1, y1 = mask.xyxy
    lx0, ly0 = int(np.floor(x0 * rx)), int(np.floor(y0 * ry))
    lx1, ly1 = min(int(np.ceil(x1 * rx)), lowres), min(int(np.ceil(y1 * ry)), lowres)
    # the crop placed on the low-res pixel grid: pad it to whole low-res pixels, then area-average
    px0, py0 = int(round(lx0 / rx)), int(round(ly0 / ry))
    pw, ph = max(int(round(lx1 / rx)) - px0, 1), max(int(round(ly1 / ry)) - py0, 1)
    window = np.zeros((ph, pw), dtype=np.float32)
    bits = mask.bits
    ys, xs = y0 - py0, x0 - px0
    h, w = min(bits.shape[0], ph - ys), min(bits.shape[1], pw - xs)
    if h > 0 and w > 0:
        window[ys : ys + h, xs : xs + w] = bits[:h, :w]
    soft = cv2.resize(window, (lx1 - lx0, ly1 - ly0), interpolation=cv2.INTER_AREA)
    soft = np.clip(soft, 1e-3, 1 - 1e-3)
    out[ly0:ly1, lx0:lx1] = np.log(soft / (1 - soft))
    return out
