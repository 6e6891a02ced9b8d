"""The SAM stage: one image-encoder pass per image, boxes decoded together in bounded batches.

Ultralytics' SAM predictors do the encoding and prompt decoding (the PyTorch reference). Masks are
upsampled here rather than by the predictor's postprocess, which drops masks scoring under its
``conf`` and so loses track of which box a mask belongs to, and which holds every full-size float
mask of an image at once. The upsampling is the same bilinear resize, written as two interpolation
matrices so that each mask is computed only inside the window where it can be positive.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline import fsio
from pipeline.errors import SamlabelError
from pipeline.threads import torch_threads
from pipeline.types import CropMask, Instances
from pipeline.weights import resolve_weights

LOGGER = logging.getLogger(__name__)

SAM_INPUT = 1024  # every SAM / SAM2 model here encodes a 1024 x 1024 letterboxed image


class Segmenter:
    """Give every instance that has no mask yet a SAM mask and score, prompted with its box."""

    def __init__(self, weights: str, *, device: str | None = None, batch: int = 0, runtime: str = "torch") -> None:
        from ultralytics.models.sam import Predictor, SAM2Predictor
        from ultralytics.models.sam.build import build_sam, sam_model_map

        path = resolve_weights(weights, flag="--segmenter")
        if not any(path.name.endswith(k) for k in sam_model_map):
            raise SamlabelError(
                f"--segmenter {weights}: Ultralytics picks the SAM architecture from the file name, which must "
                f"end with one of {sorted(sam_model_map)}; rename the file accordingly"
            )
        try:
            model = build_sam(str(path))
        except Exception as e:  # noqa: BLE001 - a bad file surfaces as many exception types (pickle, zip, torch)
            raise SamlabelError(f"--segmenter {weights}: cannot load it as SAM weights ({e})") from None
        predictor_cls = SAM2Predictor if "sam2" in path.stem else Predictor
        self.predictor = predictor_cls(overrides=dict(device=device, imgsz=SAM_INPUT, conf=0.0, verbose=False))
        self.predictor.setup_model(model, verbose=False)
        self.predictor.imgsz = [SAM_INPUT, SAM_INPUT]
        self.threshold = float(getattr(model, "mask_threshold", 0.0))
        self.runtime, self.onnx_decoder = select_runtime(
            runtime, model=self.predictor.model, weights=path, device=self.device
        )
        # Boxes per decoder call. PyTorch's decoder copies the image embedding per box and gets slower per box
        # as the chunk grows on CPU (cache-bound: 68 ms/box at 4, 126 ms at 32); the ONNX box decoder shares
        # the image-side work of a chunk (26-29 ms/box from 2 to 8 boxes, 34 ms for one).
        self.batch = batch or (32 if self.device.type != "cpu" else 8 if self.onnx_decoder else 4)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray):
        """Image features for one uint8 (H, W, 3) RGB image (the image-encoder pass)."""
        with torch_threads():
            im = self.predictor.preprocess([np.ascontiguousarray(rgb[..., ::-1])])
            return self.predictor.get_im_features(im)

    @torch.inference_mode()
    def decode(self, features, xyxy: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (N, 256, 256) and scores (N,) for boxes ``xyxy`` (N, 4) in pixels."""
        p = self.predictor
        prompts = p._prepare_prompts((SAM_INPUT, SAM_INPUT), hw, bboxes=np.asarray(xyxy, dtype=np.float32))
        if self.onnx_decoder is not None:  # SAM-1 family: prompts are (boxes, points, labels, masks)
            logits, scores = self.onnx_decoder(features, prompts[0])
            return logits.flatten(0, 1), scores.flatten(0, 1)
        with torch_threads():
            return p._inference_features(features, *prompts, multimask_output=False)

    def __call__(self, rgb: np.ndarray, instances: Instances) -> Instances:
        """Segment the instances of one image that have no mask yet.

        Args:
            rgb: uint8 (H, W, 3) RGB image.
            instances: boxes ``xyxy`` in pixels of this image.

        Returns:
            ``instances`` with ``masks`` and ``mask_score`` filled for every previously unmasked
            instance (an empty ``CropMask`` when SAM's mask is empty); nothing is dropped or reordered.
        """
        todo = [i for i, m in enumerate(instances.masks) if m is None]
        if not todo:
            return instances
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        features = self.encode(rgb)
        upsampler = Upsampler(hw, device=self.device)
        masks, scores = list(instances.masks), instances.mask_score.copy()
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            logits, pred_scores = self.decode(features, instances.xyxy[chunk], hw)
            pred_scores = pred_scores.float().cpu().numpy()
            with torch_threads():
                for k, i in enumerate(chunk):
                    masks[i] = upsampler(logits[k], threshold=self.threshold)
                    scores[i] = pred_scores[k]
        return instances.replace(masks=tuple(masks), mask_score=scores)


RUNTIMES = ("torch", "onnx", "auto")


def select_runtime(runtime: str, *, model, weights: Path, device: torch.device):
    """Put the image encoder (and, for the SAM-1 family, the box decoder) on the requested runtime.

    ``onnx`` exports the encoder and decoder once (cached beside the weights, keyed by their hash),
    checks each against PyTorch on fixed inputs and swaps them in. ``auto`` does that on CPU when
    onnxruntime is installed and the checks pass, and otherwise keeps PyTorch (the reference).

    Returns:
        (the runtime in use, the ONNX box decoder or ``None``).

    Raises:
        SamlabelError: ``onnx`` asked for but onnxruntime is missing or the export fails its check.
    """
    if runtime not in RUNTIMES:
        raise SamlabelError(f"--runtime {runtime}: expected one of {list(RUNTIMES)}")
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return "torch", None
    try:
        from pipeline import onnx_runtime

        onnx_runtime._import_ort()
        path = onnx_runtime.ensure_encoder_onnx(model.image_encoder, weights)
        encoder = onnx_runtime.OnnxEncoder(path)
        _check_once(path, lambda: onnx_runtime.self_check(model.image_encoder, encoder))
        decoder = None
        if hasattr(model, "mask_decoder") and hasattr(model, "prompt_encoder"):  # SAM-1 family
            decoder_path = onnx_runtime.ensure_decoder_onnx(model, weights)
            decoder = onnx_runtime.OnnxBoxDecoder(decoder_path)
            _check_once(decoder_path, lambda: onnx_runtime.decoder_self_check(model, decoder))
    except (ImportError, ValueError, RuntimeError, OSError, TypeError) as e:
        if runtime == "onnx":
            raise SamlabelError(
                f"--runtime onnx: cannot use ONNX Runtime for {weights.name} ({e}); "
                "install it with `pip install samlabel[onnx]` or use --runtime torch"
            ) from None
        LOGGER.warning("ONNX Runtime not used for %s (%s); using PyTorch", weights.name, e)
        return "torch", None
    model.image_encoder = encoder
    LOGGER.info("SAM image encoder%s run on ONNX Runtime (%s)", " and decoder" if decoder else "", path.name)
    return "onnx", decoder


def _check_once(export: Path, check) -> None:
    """Run ``check`` (raises on a bad export) unless ``export`` already passed; record the result atomically."""
    record = export.with_suffix(".check.json")
    if not record.is_file():
        fsio.write_text(record, json.dumps({"max_abs_diff": check()}) + "\n")


class Upsampler:
    """Bilinear resize of SAM's low-res logits to the image, exactly as Ultralytics' postprocess does.

    Ultralytics crops the letterboxed content from the 256 x 256 logits and resizes it to (H, W)
    (``F.interpolate``, or ``F.grid_sample`` when the content ends mid-pixel). Both are separable:
    ``out = Ry @ logits @ Rx.T`` with fixed (H, 256) and (W, 256) matrices. A bilinear output pixel
    can only be positive if one of the low-res pixels it mixes is, so each mask is evaluated only
    on the window those pixels reach: memory and time follow the object, not the image.
    """

    def __init__(self, hw: tuple[int, int], *, lowres: int = 256, device: torch.device | str = "cpu") -> None:
        self.hw = hw
        ry, rx = _interp_matrices(hw[0], hw[1], lowres)
        self.ry = torch.from_numpy(ry).to(device)
        self.rx = torch.from_numpy(rx).to(device)
        self._y_span = _spans(ry)
        self._x_span = _spans(rx)

    def __call__(self, logits: torch.Tensor, *, threshold: float = 0.0) -> CropMask:
        """Threshold one (lowres, lowres) logit map at image resolution, as a ``CropMask``."""
        positive = logits > threshold
        rows = torch.nonzero(positive.any(dim=1)).flatten()
        cols = torch.nonzero(positive.any(dim=0)).flatten()
        if rows.numel() == 0:
            return CropMask(np.zeros((0, 0), dtype=bool))
        y0, y1 = self._window(self._y_span, int(rows[0]), int(rows[-1]))
        x0, x1 = self._window(self._x_span, int(cols[0]), int(cols[-1]))
        window = self.ry[y0:y1] @ logits.float() @ self.rx[x0:x1].T
        positive = (window > threshold).cpu().numpy()
        rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
        if rows.size == 0:
            return CropMask(np.zeros((0, 0), dtype=bool))
        bits = positive[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return CropMask(bits, x0 + int(cols[0]), y0 + int(rows[0]))

    @staticmethod
    def _window(span: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[int, int]:
        first, last = span
        return int(first[lo : hi + 1].min()), int(last[lo : hi + 1].max()) + 1

    def full(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-image float logits (H, W); for tests and comparisons."""
        return self.ry @ logits.float() @ self.rx.T


def _spans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each low-res index j, the first and last output index whose weight on j is non-zero."""
    nz = matrix != 0
    any_ = nz.any(axis=0)
    # A low-res index that no output reads from (letterbox padding) must not widen the window.
    first = np.where(any_, nz.argmax(axis=0), matrix.shape[0])
    last = np.where(any_, matrix.shape[0] - 1 - nz[::-1].argmax(axis=0), -1)
    return first, last


@lru_cache(maxsize=8)
def _interp_matrices(h: int, w: int, lowres: int) -> tuple[np.ndarray, np.ndarray]:
    """The (H, lowres) and (W, lowres) float32 matrices of Ultralytics' SAM mask postprocess."""
    gain = min(SAM_INPUT / h, SAM_INPUT / w)
    ratio_h = round(h * gain) * lowres / SAM_INPUT / h
    ratio_w = round(w * gain) * lowres / SAM_INPUT / w
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
