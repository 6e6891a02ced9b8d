"""How each SAM family is run: one profile per architecture, the only place its pre- and postprocessing live.

A profile says how an (H, W) RGB image becomes the square encoder input (1024 x 1024; SAM 3: 1008),
how prompts in image pixels move into that frame, and how the decoder's low-resolution logits (4 per
patch of the encoder: 256 x 256; SAM 3: 288 x 288) become a mask at (H, W). The torch and ONNX backends, the upsampler and fine-tuning all ask the profile; none of them
branches on the architecture.

* ``ultralytics`` (SAM b/l/h, MobileSAM, SAM2 / SAM2.1, as Ultralytics runs them): Ultralytics'
  ``LetterBox`` (cv2 bilinear to ``round(side * r)`` with ``r = 1024 / max(H, W)``, grey padding
  bottom right), ImageNet mean / std; prompts times ``r``; the logits of the content cells resized
  straight to (H, W); mask = logits > 0.
* ``sam3`` (SAM 3's interactive head, as Ultralytics' ``SAM3Predictor`` runs it): the same at an input
  side of 1008 (``r = 1008 / max(H, W)``, patches of 14 pixels, 288 x 288 logits) with mean = std = 127.5 (set by
  the predictor). The input side is the profile's ``input_size``: every frame computation asks it.
* ``segment_anything`` (HQ-SAM, as ``segment_anything_hq.SamPredictor`` runs it): segment-anything's
  ``ResizeLongestSide`` (PIL bilinear to ``int(side * r + 0.5)``), mean / std, zero padding bottom
  right; prompts times ``new_side / side`` per axis; logits resized to 1024 x 1024, cropped to the
  content, resized to (H, W) (``Sam.postprocess_masks``); mask = logits > 0.
* ``medsam`` (MedSAM, as ``MedSAM_Inference.py`` runs it): the image stretched to 1024 x 1024 without
  keeping the aspect ratio (scikit-image ``resize(order=3, preserve_range=True, anti_aliasing=True)``
  then ``uint8``, computed here with SciPy exactly as scikit-image does), intensities min-max scaled
  to [0, 1] over the whole image, no mean / std; prompts times ``1024 / W`` and ``1024 / H``;
  ``sigmoid(logits)`` resized straight to (H, W) (bilinear, ``align_corners=False``); mask = > 0.5.
  MedSAM was trained on box prompts only: points and mask inputs are accepted (scaled per axis like
  boxes) but lie outside its training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: Side of the square encoder input of every SAM here but SAM 3 (``Profile.input_size``), and of the
#: low-resolution logits (1/4 of it, ``Profile.lowres``: 4 per patch of 16 pixels).
SAM_INPUT = 1024
LOWRES = SAM_INPUT // 4
SAM3_INPUT = 1008  # SAM 3: 72 x 72 patches of 14 pixels

Resize = Literal["letterbox", "longest_side", "stretch"]
Normalize = Literal["mean_std", "min_max"]
Upsample = Literal["content", "input_then_content", "direct"]

_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass(frozen=True)
class Profile:
    """The pre- and postprocessing of one SAM family (see the module doc for the three in use).

    Attributes:
        name: ``ultralytics``, ``segment_anything`` or ``medsam``.
        resize: ``letterbox`` (Ultralytics' ``LetterBox``, done by its predictor), ``longest_side``
            (segment-anything's ``ResizeLongestSide``) or ``stretch`` (to 1024 x 1024, aspect not kept).
        normalize: ``mean_std`` (ImageNet mean / std of 0-255 pixels; with ``letterbox``, the predictor's own,
            127.5 / 127.5 for SAM 3) or ``min_max`` (to [0, 1] per image).
        upsample: ``content`` (content cells of the logits straight to (H, W), Ultralytics),
            ``input_then_content`` (to 1024 x 1024, crop the content, to (H, W): segment-anything) or
            ``direct`` (all 256 x 256 straight to (H, W): MedSAM).
        sigmoid: the probabilities ``sigmoid(logits)`` are upsampled and thresholded at ``sigmoid(t)``
            (MedSAM: ``> 0.5``) instead of the logits at ``t``.
        box_only: the model was trained on box prompts only (clicks and mask inputs work but are untrained).
        input_size: side of the square encoder input (1024; SAM 3: 1008).
        patch: pixels per side of the encoder's patches (16; SAM 3: 14); the logits have 4 cells per patch.
        torch_only: the model has no ONNX Runtime export here (SAM 3): ``runtime="auto"`` means PyTorch.
    """

    name: str
    resize: Resize
    normalize: Normalize
    upsample: Upsample
    sigmoid: bool = False
    box_only: bool = False
    input_size: int = SAM_INPUT
    patch: int = 16
    torch_only: bool = False

    @property
    def lowres(self) -> int:
        """Side of the decoder's low-resolution logits (and of a mask input): 4 per patch (256; SAM 3: 288)."""
        return self.input_size // self.patch * 4

    def content_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the square encoder input that the image covers (the rest is padding)."""
        h, w = hw
        side = self.input_size
        if self.resize == "stretch":
            return side, side
        r = min(side / h, side / w)
        if self.resize == "longest_side":  # ResizeLongestSide.get_preprocess_shape
            r = side * 1.0 / max(h, w)
            return int(h * r + 0.5), int(w * r + 0.5)
        return max(round(h * r), 1), max(round(w * r), 1)  # LetterBox

    def scale_xy(self, hw: tuple[int, int]) -> tuple[float, float]:
        """(sx, sy): encoder-input pixels per image pixel along x and y (what prompts are multiplied by)."""
        h, w = hw
        if self.resize == "letterbox":  # Ultralytics' _prepare_prompts: one ratio for both axes
            r = min(self.input_size / h, self.input_size / w)
            return r, r
        ch, cw = self.content_hw(hw)
        return cw / w, ch / h

    def scale_boxes(self, xyxy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """float32 (N, 4) xyxy in image pixels -> encoder-input pixels (a float32 product, as the SAM stage's)."""
        sx, sy = self.scale_xy(hw)
        return np.asarray(xyxy, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> float32 (1, 3, 1024, 1024) encoder input (``longest_side`` and ``stretch``).

        ``letterbox`` is Ultralytics' own preprocessing, run by its predictor
        (:meth:`pipeline.sam.torch_backend.TorchBackend.preprocess`).
        """
        if self.resize == "letterbox":
            raise ValueError("the letterbox profile is preprocessed by Ultralytics' predictor")
        if self.resize == "stretch":
            image = stretch_cubic(rgb, (self.input_size, self.input_size)).astype(np.float32)
        else:
            from PIL import Image

            h, w = self.content_hw(rgb.shape[:2])
            image = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        if self.normalize == "min_max":
            lo, hi = float(image.min()), float(image.max())
            image = (image - lo) / max(hi - lo, 1e-8)
        else:
            image = (image - _MEAN) / _STD
        out = np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32)  # zero padding after normalisation
        out[0, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
        return out

    def upsample_values(self, logits):
        """What is upsampled, as float32: the logits, or their sigmoid (a torch tensor or a numpy array, as given)."""
        if isinstance(logits, np.ndarray):
            values = logits.astype(np.float32, copy=False)
            return (1 / (1 + np.exp(-values))).astype(np.float32) if self.sigmoid else values
        import torch

        return torch.sigmoid(logits.float()) if self.sigmoid else logits.float()

    def upsample_threshold(self, threshold: float) -> float:
        """A logit threshold in the units of :meth:`upsample_values` (``sigmoid(t)`` for MedSAM)."""
        return 1.0 / (1.0 + math.exp(-threshold)) if self.sigmoid else threshold


#: The SAM-1 family as Ultralytics builds it (``sam_model_map``): the ``ultralytics`` profile, an ONNX box decoder, and
#: the mask threshold of Ultralytics' ``SAMModel`` (0.0). Their names are known here without importing Ultralytics (a
#: test checks them against ``sam_model_map``), so a run on them can start without PyTorch.
SAM1_ARCHS = ("sam_h", "sam_l", "sam_b", "mobile_sam")
SAM1_THRESHOLD = 0.0

ULTRALYTICS = Profile("ultralytics", resize="letterbox", normalize="mean_std", upsample="content")
SEGMENT_ANYTHING = Profile(
    "segment_anything", resize="longest_side", normalize="mean_std", upsample="input_then_content"
)
MEDSAM = Profile("medsam", resize="stretch", normalize="min_max", upsample="direct", sigmoid=True, box_only=True)
SAM3 = Profile(
    "sam3",
    resize="letterbox",
    normalize="mean_std",
    upsample="content",
    input_size=SAM3_INPUT,
    patch=14,
    torch_only=True,
)

#: Architectures that are not Ultralytics': name -> (profile, what builds the model, file names that say it).
#: ``builder`` is ``ultralytics:<arch>`` (Ultralytics' builder of that architecture) or ``sam_hq:<registry key>``.
EXTRA_ARCHS: dict[str, tuple[Profile, str, tuple[str, ...]]] = {
    "medsam": (MEDSAM, "ultralytics:sam_b", ("medsam_vit_b.pth", "medsam_vit_b.pt")),
    "sam_hq_vit_b": (SEGMENT_ANYTHING, "sam_hq:vit_b", ("sam_hq_vit_b.pth", "sam_hq_vit_b.pt")),
    "sam_hq_vit_l": (SEGMENT_ANYTHING, "sam_hq:vit_l", ("sam_hq_vit_l.pth", "sam_hq_vit_l.pt")),
    "sam_hq_vit_h": (SEGMENT_ANYTHING, "sam_hq:vit_h", ("sam_hq_vit_h.pth", "sam_hq_vit_h.pt")),
    "sam_hq_vit_tiny": (SEGMENT_ANYTHING, "sam_hq:vit_tiny", ("sam_hq_vit_tiny.pth", "sam_hq_vit_tiny.pt")),
    # SAM 3's interactive head; any file whose name starts with ``sam3`` (pipeline.weights.is_sam3_file) says it
    "sam3": (SAM3, "sam3:interactive", ("sam3.pt",)),
}


def profile_of(arch: str) -> Profile:
    """The profile of an architecture (``ultralytics`` for every architecture Ultralytics builds)."""
    extra = EXTRA_ARCHS.get(arch)
    return extra[0] if extra else ULTRALYTICS


def is_hq(arch: str) -> bool:
    """Whether ``arch`` is an HQ-SAM model (built and run by the ``segment-anything-hq`` package)."""
    extra = EXTRA_ARCHS.get(arch)
    return extra is not None and extra[1].startswith("sam_hq:")


def stretch_cubic(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 ``size_hw`` + (C,): MedSAM's resize, computed as scikit-image computes it.

    ``skimage.transform.resize(rgb, size, order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)``:
    a Gaussian pre-filter of sigma ``max(0, (factor - 1) / 2)`` on shrunk axes (mode ``mirror``), a cubic
    spline zoom with ``grid_mode=True`` (mode ``mirror``), the result clipped to the input's range, then
    truncated to uint8 (``astype``, as MedSAM does).
    """
    from scipy import ndimage as ndi

    image = np.asarray(rgb).astype(np.float64)
    out_shape = (*size_hw, image.shape[2])
    factors = np.divide(image.shape, out_shape)
    sigma = np.maximum(0, (factors - 1) / 2)
    if np.any(sigma > 0):
        image_f = ndi.gaussian_filter(image, sigma, cval=0.0, mode="mirror")
    else:
        image_f = image
    out = ndi.zoom(image_f, [1 / f for f in factors], order=3, mode="mirror", cval=0.0, grid_mode=True)
    out = np.clip(out, image.min(), image.max())
    return out.astype(np.uint8)


def letterbox(rgb: np.ndarray, side: int, *, pad: int = 114) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (side, side, 3): Ultralytics' ``LetterBox(side, auto=False, center=False)``, the
    resize of its SAM predictors' ``pre_transform``.

    Scaled by ``r = min(side / H, side / W)`` to ``(max(round(W r), 1), max(round(H r), 1))`` with OpenCV's bilinear
    resize (skipped at the same size), then padded with ``pad`` at the bottom and right. The resize treats each channel
    alike, so RGB in gives the RGB of Ultralytics' BGR result.
    """
    import cv2

    h, w = rgb.shape[:2]
    r = min(side / h, side / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    image = rgb if (w, h) == (new_w, new_h) else cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.full((side, side, 3), pad, dtype=np.uint8)
    out[: image.shape[0], : image.shape[1]] = image[:side, :side]
    return out


def sam1_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (1, 3, 1024, 1024): the encoder input of Ultralytics' SAM-1 ``Predictor`` on the
    CPU (letterbox, then ``(x - mean) / std`` with its ImageNet mean and std), computed with numpy alone."""
    chw = np.ascontiguousarray(letterbox(rgb, SAM_INPUT).transpose(2, 0, 1))
    x = chw - _MEAN.reshape(3, 1, 1)
    x /= _STD.reshape(3, 1, 1)
    return x[None]
