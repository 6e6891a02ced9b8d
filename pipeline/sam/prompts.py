"""SAM prompts: checked once, then held in encoder-input pixels for every backend.

Images become SAM's square input of side S (1024; SAM 3: 1008, ``Profile.input_size``) as the
architecture's profile says (:mod:`pipeline.sam.profiles`): letterboxed by Ultralytics (prompts times
``r = min(S / H, S / W)``), resized along the longest side by segment-anything, or stretched by MedSAM
(prompts scaled per axis). Mask inputs are SAM's own low-resolution logits (256 x 256, SAM 3
288 x 288: ``Profile.lowres``), which are in the input frame already.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.sam.profiles import LOWRES, SAM_INPUT, ULTRALYTICS, Profile

__all__ = ["LOWRES", "POINT_LABELS", "SAM_INPUT", "Prompts", "input_scale", "prepare_prompts"]
POINT_LABELS = (-1, 0, 1)  # padding, negative, positive (SAM's own codes; 2 and 3 are its box corners)


@dataclass(frozen=True)
class Prompts:
    """N prompts in encoder-input pixels; each field is ``None`` or holds one entry per prompt.

    Attributes:
        boxes: float (N, 4) xyxy.
        points: float (N, P, 2) xy.
        labels: int32 (N, P): 1 positive, 0 negative, -1 padding.
        masks: float (N, 1, L, L) low-resolution mask logits (L = ``Profile.lowres``: 256; SAM 3 288).
    """

    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    @property
    def n(self) -> int:
        """Number of prompts."""
        first = next(t for t in (self.boxes, self.points, self.masks) if t is not None)
        return int(first.shape[0])

    @property
    def box_only(self) -> bool:
        """Boxes and nothing else."""
        return self.boxes is not None and self.points is None and self.masks is None

    def __getitem__(self, rows: slice) -> Prompts:
        """The prompts ``rows`` (a slice), sharing memory."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Prompts(pick(self.boxes), pick(self.points), pick(self.labels), pick(self.masks))

    def as_points(self, *, box_first: bool, pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Points and box corners as one point set per prompt: coords float (N, P', 2), labels int32 (N, P').

        Box corners get SAM's labels 2 (top left) and 3 (bottom right), before the points when
        ``box_first`` (SAM2's order) or after them (SAM's prompt encoder, and its ONNX model). With
        ``pad`` a prompt without a box gets one padding point (label -1), as SAM's prompt encoder adds.
        """
        coords, labels = [], []
        if self.points is not None:
            coords.append(self.points)
            labels.append(self.labels)
        if self.boxes is not None:
            corners = self.boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=corners.device).expand(len(corners), -1)
            coords.insert(0 if box_first else len(coords), corners)
            labels.insert(0 if box_first else len(labels), corner_labels)
        elif pad:
            n, device = self.n, self.points.device
            coords.append(torch.zeros((n, 1, 2), dtype=self.points.dtype, device=device))
            labels.append(torch.full((n, 1), -1, dtype=torch.int32, device=device))
        return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


def input_scale(hw: tuple[int, int]) -> float:
    """``r``: encoder-input pixels per image pixel (Ultralytics' ``_prepare_prompts`` ratio)."""
    return min(SAM_INPUT / hw[0], SAM_INPUT / hw[1])


def prepare_prompts(
    hw: tuple[int, int],
    *,
    boxes=None,
    points=None,
    point_labels=None,
    mask_input=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    profile: Profile = ULTRALYTICS,
) -> Prompts:
    """Check prompts given in pixels of an (H, W) image and put them in encoder-input pixels.

    Args:
        hw: the image's (H, W).
        boxes: float (N, 4) xyxy in image pixels.
        points: float (N, P, 2) xy in image pixels (column, row).
        point_labels: int (N, P): 1 positive, 0 negative, -1 padding (SAM's not-a-point token, which lets
            prompts with fewer points share a batch; it is a token, not a no-op).
        mask_input: float (N, 256, 256) low-resolution logits from an earlier prediction (numpy or torch);
            (N, 288, 288) for SAM 3 (``profile.lowres``).
        device: where the tensors go.
        dtype: float type of the tensors.
        profile: the architecture's profile: how image pixels map to encoder-input pixels on each axis.

    Raises:
        ValueError: a shape, count or value that is not as documented (the message says expected vs got).
    """
    if boxes is None and points is None:
        what = "mask_input alone" if mask_input is not None else "no prompt"
        raise ValueError(f"expected boxes or points (mask_input refines one of them), got {what}")
    sx, sy = profile.scale_xy(hw)
    counts = {}
    out = {}
    if boxes is not None:
        b = _float_array("boxes", boxes, ndim=2, tail=(4,), form="(N, 4)")
        counts["boxes"] = len(b)
        out["boxes"] = torch.as_tensor(b, dtype=dtype, device=device) * _scale((sx, sy, sx, sy), dtype, device)
    if points is not None:
        p = _float_array("points", points, ndim=3, tail=(2,), form="(N, P, 2)")
        if p.shape[1] == 0:
            raise ValueError(f"points: expected at least one point per prompt, shape (N, P >= 1, 2), got {p.shape}")
        if point_labels is None:
            raise ValueError("point_labels: expected int (N, P) with points (1 positive, 0 negative), got None")
        labels = np.asarray(point_labels)
        if labels.shape != p.shape[:2]:
            raise ValueError(f"point_labels: expected shape {p.shape[:2]} (N, P) like points, got {labels.shape}")
        bad = sorted(set(np.unique(labels).tolist()) - set(POINT_LABELS))
        if bad:
            raise ValueError(f"point_labels: expected 1 (positive), 0 (negative) or -1 (padding), got {bad}")
        counts["points"] = len(p)
        out["points"] = torch.as_tensor(p, dtype=dtype, device=device) * _scale((sx, sy), dtype, device)
        out["labels"] = torch.as_tensor(labels.astype(np.int32), device=device)
    elif point_labels is not None:
        raise ValueError("point_labels: expected None without points, got labels")
    if mask_input is not None:
        side = profile.lowres
        m = _float_array("mask_input", mask_input, ndim=3, tail=(side, side), form=f"(N, {side}, {side})")
        counts["mask_input"] = len(m)
        out["masks"] = torch.as_tensor(m, dtype=dtype, device=device)[:, None]
    if len(set(counts.values())) > 1:
        got = ", ".join(f"{v} {k}" for k, v in counts.items())
        raise ValueError(f"expected the same number of prompts N in every argument, got {got}")
    return Prompts(**out)


def _scale(factors: tuple[float, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Per-axis factors as a tensor of the prompts' dtype (a product like ``tensor * r`` for equal factors)."""
    return torch.tensor(factors, dtype=dtype, device=device)


def _float_array(name: str, value, *, ndim: int, tail: tuple[int, ...], form: str) -> np.ndarray:
    """``value`` as a finite float32 array of ``ndim`` dimensions ending in ``tail``, else ValueError."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    try:
        a = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a float array of shape {form}, got {type(value).__name__} ({e})") from None
    if a.ndim != ndim or a.shape[ndim - len(tail) :] != tail:
        raise ValueError(f"{name}: expected shape {form}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return a
