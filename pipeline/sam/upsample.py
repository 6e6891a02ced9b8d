"""Upsampling of SAM's low-resolution logits to image masks, as each family's authors do (see :mod:`.profiles`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from pipeline.sam.profiles import ULTRALYTICS, Profile
from pipeline.types import CropMask

if TYPE_CHECKING:
    import torch
    from torch import Tensor


class Upsampler:
    """Bilinear resize of SAM's low-res logits to the image, as the profile's family does it.

    The ``ultralytics`` profile: Ultralytics crops the letterboxed content from the 256 x 256 logits and resizes it to (H, W)
    (``F.interpolate``, or ``F.grid_sample`` when the content ends mid-pixel). Both are separable:
    ``out = Ry @ logits @ Rx.T`` with fixed (H, 256) and (W, 256) matrices. A bilinear output pixel
    can only be positive if one of the low-res pixels it mixes is, so each mask is evaluated only
    on the window those pixels reach: memory and time follow the object, not the image.

    ``segment_anything`` (``Sam.postprocess_masks``: to 1024 x 1024, crop, to (H, W)) is the product of two
    such matrices; ``medsam`` resizes all 256 x 256 straight to (H, W) and works on ``sigmoid(logits)``
    (thresholds are still given in logit units; :meth:`Profile.upsample_threshold` maps them).

    ``device=None`` keeps the matrices in numpy and takes numpy logits (the segmenter's ONNX box path, which runs
    without PyTorch); otherwise they are torch tensors on ``device`` and the logits are torch tensors. The two
    products agree to float rounding (the BLAS libraries sum in their own order).
    """

    def __init__(
        self,
        hw: tuple[int, int],
        *,
        lowres: int | None = None,
        device: torch.device | str | None = "cpu",
        profile: Profile = ULTRALYTICS,
    ) -> None:
        self.hw = hw
        self.profile = profile
        lowres = profile.lowres if lowres is None else lowres
        ry, rx = _interp_matrices(hw[0], hw[1], lowres, profile)
        if device is None:
            self.ry, self.rx = ry, rx
        else:
            import torch

            self.ry = torch.from_numpy(ry).to(device)
            self.rx = torch.from_numpy(rx).to(device)
        self._y_span = _spans(ry)
        self._x_span = _spans(rx)

    def __call__(self, logits: Tensor, *, threshold: float = 0.0) -> CropMask:
        """Threshold one (lowres, lowres) logit map at image resolution, as a ``CropMask``."""
        return self.at_thresholds(logits, (threshold,))[0]

    def at_thresholds(self, logits: Tensor, thresholds: Sequence[float]) -> list[CropMask]:
        """One logit map thresholded at each of ``thresholds``, from one upsampling of one window.

        The window is that of the lowest threshold, which holds every higher threshold's mask, so
        several masks cost about one. With one threshold this is ``__call__``; with several, a mask
        equals ``__call__``'s up to float rounding of the window product (a pixel within ~1e-6 of a
        threshold may differ).

        SAM's stability score (the IoU of the masks at the model's threshold + 1 and - 1, at image
        resolution; the first mask lies inside the second, so the IoU is an area ratio)::

            hi, lo = upsampler.at_thresholds(logits, (threshold + 1.0, threshold - 1.0))
            stability = hi.area / lo.area if lo.area else 1.0

        (:meth:`mask_and_stability` gives it with the mask at ``threshold``, sharing the product when it can.)

        Args:
            logits: float (lowres, lowres) logits of one mask.
            thresholds: logit thresholds, in any order.

        Returns:
            One ``CropMask`` per threshold, in the order given (empty ``(0, 0)`` crops where nothing is above).
        """
        if len(thresholds) == 0:
            raise ValueError("thresholds: expected at least one threshold, got none")
        values = self.profile.upsample_values(logits)
        thresholds = [self.profile.upsample_threshold(float(t)) for t in thresholds]
        found = self._window_values(values, min(thresholds))
        if found is None:
            return [_EMPTY] * len(thresholds)
        return [_crop(*found, threshold) for threshold in thresholds]

    def mask_and_stability(self, logits: Tensor, threshold: float, *, offset: float = 1.0) -> tuple[CropMask, float]:
        """``self(logits, threshold=threshold)`` and SAM's stability score, each exactly as computed alone.

        The mask is ``__call__``'s; the stability score is ``hi.area / lo.area`` (1.0 when both are empty) for
        ``hi, lo = self.at_thresholds(logits, (threshold + offset, threshold - offset))``. The window product
        is made once when the mask's window and the stability's (that of ``threshold - offset``) are the same
        rectangle (the same product either way), else once for each, as those two calls do.
        """
        values = self.profile.upsample_values(logits)
        levels = (threshold, threshold + offset, threshold - offset)
        t, hi_t, lo_t = (self.profile.upsample_threshold(float(v)) for v in levels)
        positive = _above(values, min(t, lo_t))
        rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if rows.size == 0:
            return _EMPTY, 1.0
        loose = self._window_of(rows, cols)
        found = self._window_values(values, t, positive=_above(values, t) if t > lo_t else positive)
        mask = _EMPTY if found is None else _crop(*found, t)
        if found is None or found[1:] != loose:  # another rectangle: its own product, as at_thresholds makes it
            found = (self._product(values, *loose), *loose)
        window = found[0]
        lo = int(np.count_nonzero(_above(window, lo_t)))
        hi = int(np.count_nonzero(_above(window, hi_t)))
        return mask, (hi / lo if lo else 1.0)

    def _window_values(
        self, values: Tensor, threshold: float, *, positive: np.ndarray | None = None
    ) -> tuple[Tensor, int, int, int, int] | None:
        """``(window product, y0, y1, x0, x1)`` of the window where ``values > threshold`` can be; None if nowhere."""
        positive = _above(values, threshold) if positive is None else positive
        rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if rows.size == 0:
            return None
        y0, y1, x0, x1 = self._window_of(rows, cols)
        return self._product(values, y0, y1, x0, x1), y0, y1, x0, x1

    def _window_of(self, rows: np.ndarray, cols: np.ndarray) -> tuple[int, int, int, int]:
        y0, y1 = self._window(self._y_span, int(rows[0]), int(rows[-1]))
        x0, x1 = self._window(self._x_span, int(cols[0]), int(cols[-1]))
        return y0, y1, x0, x1

    def _product(self, values, y0: int, y1: int, x0: int, x1: int):
        """The upsampled values on rows ``y0:y1`` and columns ``x0:x1`` of the image (one product, always this one)."""
        return self.ry[y0:y1] @ values @ self.rx[x0:x1].T

    @staticmethod
    def _window(span: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[int, int]:
        first, last = span
        return int(first[lo : hi + 1].min()), int(last[lo : hi + 1].max()) + 1

    def full(self, logits: Tensor) -> Tensor:
        """Full-image float (H, W) of what is thresholded (logits, or probabilities for MedSAM); for tests."""
        return self.ry @ self.profile.upsample_values(logits) @ self.rx.T


_EMPTY = CropMask(np.zeros((0, 0), dtype=bool))


def _above(values, threshold: float) -> np.ndarray:
    """``values > threshold`` as a numpy bool array, compared in float32 as PyTorch compares a float32 tensor with
    a Python float. On the CPU numpy does it: one pass, no thread-pool wake-up for a small array."""
    if isinstance(values, np.ndarray):
        return values > np.float32(threshold)
    if values.device.type == "cpu":
        return values.numpy() > np.float32(threshold)
    return (values > threshold).cpu().numpy()


def _crop(window: Tensor, y0: int, y1: int, x0: int, x1: int, threshold: float) -> CropMask:
    """The mask ``window > threshold`` of a window product at rows ``y0:y1``, columns ``x0:x1``, cropped tight."""
    positive = _above(window, threshold)
    rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
    if rows.size == 0:
        return _EMPTY
    bits = positive[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return CropMask(bits, x0 + int(cols[0]), y0 + int(rows[0]))


def _spans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each low-res index j, the first and last output index whose weight on j is non-zero."""
    nz = matrix != 0
    any_ = nz.any(axis=0)
    # A low-res index that no output reads from (letterbox padding) must not widen the window.
    first = np.where(any_, nz.argmax(axis=0), matrix.shape[0])
    last = np.where(any_, matrix.shape[0] - 1 - nz[::-1].argmax(axis=0), -1)
    return first, last


@lru_cache(maxsize=8)
def _interp_matrices(h: int, w: int, lowres: int, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """The (H, lowres) and (W, lowres) float32 matrices of the profile's mask postprocess."""
    if profile.upsample == "direct":  # F.interpolate(logits, (H, W), bilinear, align_corners=False)
        return _resize_matrix(h, lowres, lowres), _resize_matrix(w, lowres, lowres)
    if profile.upsample == "input_then_content":  # segment-anything's Sam.postprocess_masks
        ch, cw = profile.content_hw((h, w))
        size = lowres * profile.input_size // profile.lowres  # the input side
        first = _resize_matrix(size, lowres, lowres)
        return _resize_matrix(h, ch, ch) @ first[:ch], _resize_matrix(w, cw, cw) @ first[:cw]
    side = profile.input_size  # Ultralytics' postprocess: letterbox gain at the input, content cells of the logits
    gain = min(side / h, side / w)
    ratio_h = round(h * gain) * lowres / side / h
    ratio_w = round(w * gain) * lowres / side / w
    bottom, right = max(round(h * ratio_h), 1), max(round(w * ratio_w), 1)
    if abs(h * ratio_h - bottom) + abs(w * ratio_w - right) > 1e-3:  # content ends mid-pixel: grid_sample
        return _grid_sample_matrix(h, ratio_h, lowres), _grid_sample_matrix(w, ratio_w, lowres)
    return _resize_matrix(h, bottom, lowres), _resize_matrix(w, right, lowres)


def _resize_matrix(out_len: int, in_len: int, lowres: int) -> np.ndarray:
    """``F.interpolate(x[:in_len], out_len, mode="bilinear", align_corners=False)`` as a matrix."""
    # float32 arithmetic, as in PyTorch's CPU and CUDA kernels, so the weights match theirs bit for bit.
    dst = np.arange(out_len, dtype=np.float32)
    scale = np.float32(in_len / out_len)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    frac = src - i0
    return _two_taps(out_len, lowres, i0, i1, frac)


def _grid_sample_matrix(out_len: int, gain: float, lowres: int) -> np.ndarray:
    """Ultralytics' ``affine_grid`` + ``grid_sample`` (bilinear, border, align_corners=False) as a matrix."""
    f32 = np.float32
    scale = f32(out_len * gain / lowres)
    norm = (f32(2) * np.arange(out_len, dtype=f32) + f32(1)) / f32(out_len) - f32(1)
    src = ((scale * norm + (scale - f32(1))) + f32(1)) * f32(lowres) / f32(2) - f32(0.5)
    src = np.clip(src, f32(0), f32(lowres - 1))
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    i1 = np.minimum(i0 + 1, lowres - 1)
    return _two_taps(out_len, lowres, i0, i1, frac)


def _two_taps(out_len: int, lowres: int, i0: np.ndarray, i1: np.ndarray, frac: np.ndarray) -> np.ndarray:
    m = np.zeros((out_len, lowres), dtype=np.float32)
    rows = np.arange(out_len)
    np.add.at(m, (rows, i0), np.float32(1) - frac)
    np.add.at(m, (rows, i1), frac)
    return m
