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
from pathlib import Path

import numpy as np
import torch

from pipeline import fsio
from pipeline.errors import SamlabelError
from pipeline.sam.upsample import SAM_INPUT, Upsampler
from pipeline.threads import torch_threads
from pipeline.types import Instances
from pipeline.weights import resolve_weights

LOGGER = logging.getLogger(__name__)


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
        from pipeline.sam import onnx_backend as onnx_runtime

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
