"""The SAM stage: one image-encoder pass per image, then any number of cheap prompt decodes.

``set_image`` encodes an image once; ``predict`` decodes boxes, points (with labels), both, and
earlier low-resolution masks fed back, as segment-anything's ``SamPredictor`` does. Calling the
segmenter on an image's instances is ``predict`` with their boxes, in bounded batches.

Masks are upsampled here (:mod:`pipeline.sam.upsample`) rather than by Ultralytics' postprocess,
which drops masks scoring under its ``conf`` and so loses track of which prompt a mask belongs to,
and which holds every full-size float mask of an image at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import options
from pipeline.errors import SamlabelError
from pipeline.quality import MULTIMASK, choose_candidate
from pipeline.sam.build import load_sam, resolve_arch
from pipeline.sam.profiles import profile_of
from pipeline.sam.prompts import Prompts, prepare_prompts
from pipeline.sam.torch_backend import Features, TorchBackend, make_backend
from pipeline.sam.upsample import Upsampler
from pipeline.threads import torch_threads
from pipeline.types import CropMask, Instances
from pipeline.weights import resolve_weights

LOGGER = logging.getLogger(__name__)

RUNTIMES = options.RUNTIMES


@dataclass(frozen=True)
class ImageEmbedding:
    """One image as ``Segmenter.set_image`` encoded it; pass it to ``Segmenter.predict`` any number of times.

    Attributes:
        features: the encoder's output, ready for the decoder: SAM-1 (1, 256, 64, 64); SAM2 and SAM 3 a dict with
            ``image_embed`` and ``high_res_feats``. On the segmenter's device.
        hw: the image's (H, W).
        arch: the architecture that made it (another segmenter's embedding is refused).
        upsampler: low-res logits -> masks at this image's resolution.
    """

    features: Features = field(repr=False)
    hw: tuple[int, int]
    arch: str
    upsampler: Upsampler = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    """SAM's answer to N prompts of one image, K candidates each (3 with ``multimask``, else 1).

    Attributes:
        logits: float32 (N, K, L, L) low-resolution mask logits (L = 256; SAM 3 288), in the square input frame
            SAM works in (letterboxed, or stretched for MedSAM), on the segmenter's device; ``logits[:, k]`` is a valid ``mask_input``.
        scores: float32 (N, K) numpy: SAM's predicted IoU of each candidate.
        threshold: the model's mask logit threshold.
        upsampler: the image's upsampler (see :meth:`masks_at` for masks at other thresholds).
    """

    logits: torch.Tensor
    scores: np.ndarray
    threshold: float
    upsampler: Upsampler = field(repr=False)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def mask(self, i: int, k: int = 0) -> CropMask:
        """Candidate ``k`` of prompt ``i`` at image resolution, thresholded at the model's threshold."""
        return self.masks_at(i, (self.threshold,), k=k)[0]

    def masks(self, k: int = 0) -> list[CropMask]:
        """Candidate ``k`` of every prompt (``mask(i, k)`` for each ``i``)."""
        return [self.mask(i, k) for i in range(len(self))]

    def masks_at(self, i: int, thresholds: Sequence[float], k: int = 0) -> list[CropMask]:
        """Candidate ``k`` of prompt ``i`` thresholded at each logit threshold, from one upsampling.

        SAM's stability score is ``hi.area / lo.area`` for
        ``hi, lo = pred.masks_at(i, (pred.threshold + 1, pred.threshold - 1))``
        (see :meth:`pipeline.sam.upsample.Upsampler.at_thresholds`).
        """
        with torch_threads():
            return self.upsampler.at_thresholds(self.logits[i, k], thresholds)


class Segmenter:
    """SAM with a prompt API; calling it gives every unmasked instance a mask prompted with its box.

    Args:
        weights: a SAM / SAM2 checkpoint path, or a released name Ultralytics can download; SAM 3's ``sam3.pt``
            (any file whose name starts with ``sam3``: its interactive head) must be on disk.
        arch: one of :func:`pipeline.sam.build.sam_archs` (``sam_b``, ``mobile_sam``, ``sam2.1_t`` ...);
            ``None`` takes it from the file name.
        device: a torch / Ultralytics device string; ``None`` lets Ultralytics choose.
        batch: prompts per decoder call; 0 picks a default (32 on GPU, 8 with the ONNX box decoder, else 4).
        runtime: ``torch``; ``onnx`` (encoder on ONNX Runtime, and for the SAM-1 family the decoders too;
            a failure is an error); ``auto`` (``onnx`` on CPU when it works, else ``torch``). SAM 3 runs on
            ``torch`` only: ``auto`` means ``torch`` (said once in the log), ``onnx`` is refused.
        cache_dir: folder of the ONNX exports; ``None`` for ``$SAMLABEL_CACHE_DIR`` or the user cache folder
            (see :mod:`pipeline.sam.onnx_cache`). Nothing is written beside the weights.
        multimask: what calling the stage keeps per box: ``off`` (SAM's single mask), ``score`` (of the 3
            candidates, the best predicted IoU) or ``box-fit`` (the one whose tight box fits the prompt box
            best, ties by score); see :func:`pipeline.quality.choose_candidate`.

    Attributes:
        arch: the architecture in use.
        runtime: the runtime in use (``torch`` or ``onnx``; ``auto`` resolved).
        batch: prompts per decoder call.
        reference: the PyTorch backend (:class:`TorchBackend`, or ``HqBackend`` for HQ-SAM): the reference;
            it also preprocesses images.
        profile: how the architecture is pre- and postprocessed (:mod:`pipeline.sam.profiles`).
        backend: what encodes and decodes: ``reference`` or an ``OnnxBackend`` built on it.

    Raises:
        SamlabelError: weights not found, no or a wrong architecture, an unreadable file, a bad
            ``runtime``, or ``runtime="onnx"`` that cannot be set up (missing package, unwritable cache,
            failed check).
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        arch: str | None = None,
        device: str | None = None,
        batch: int = 0,
        runtime: options.Runtime = "torch",
        cache_dir: str | Path | None = None,
        multimask: options.Multimask = "off",
    ) -> None:
        if multimask not in MULTIMASK:
            raise SamlabelError(f"--multimask {multimask}: expected one of {list(MULTIMASK)}")
        self.multimask = multimask
        if runtime not in RUNTIMES:
            raise SamlabelError(f"--runtime {runtime}: expected one of {list(RUNTIMES)}")
        path = resolve_weights(weights, flag="--segmenter")
        self.arch = resolve_arch(path, arch)
        if runtime != check_runtime(self.arch, runtime):
            LOGGER.info("%s runs on PyTorch (it has no ONNX Runtime export here)", self.arch)
            runtime = "torch"
        with torch_threads():  # building the model runs PyTorch too
            model = load_sam(path, self.arch)
        self.reference = make_backend(model, arch=self.arch, device=device)  # PyTorch; also the preprocessing
        self.profile = self.reference.profile
        self.backend = select_backend(runtime, self.reference, weights=path, cache_dir=cache_dir)
        self.runtime: str = self.backend.name
        # Prompts per decoder call. PyTorch's decoder copies the image embedding per box and gets slower per box
        # as the chunk grows on CPU (cache-bound: 68 ms/box at 4, 126 ms at 32); the ONNX box decoder shares
        # the image-side work of a chunk (26-29 ms/box from 2 to 8 boxes, 34 ms for one).
        fast_boxes = getattr(self.backend, "box_decoder", None) is not None
        self.batch = batch or (32 if self.device.type != "cpu" else 8 if fast_boxes else 4)
        self._last_embedding: tuple[tuple, ImageEmbedding] | None = None  # (image key, embedding), see set_image

    @property
    def device(self) -> torch.device:
        return self.reference.device

    @property
    def threshold(self) -> float:
        """The model's mask logit threshold."""
        return self.reference.threshold

    @torch.inference_mode()
    def set_image(self, rgb: np.ndarray) -> ImageEmbedding:
        """Encode one uint8 (H, W, 3) RGB image (the image-encoder pass; the last image's embedding is kept and
        given back when the same pixels come again)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
            raise ValueError(f"rgb: expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        # The same pixels as the last call give its embedding back (no second encoder pass): the automatic
        # mask generator runs right after the box prompts of the same image (``--propose``).
        key = (hw, hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest())
        if self._last_embedding is not None and self._last_embedding[0] == key:
            return self._last_embedding[1]
        with torch_threads():
            features = self.backend.encode(self.reference.preprocess(rgb))
        embedding = ImageEmbedding(features, hw, self.arch, Upsampler(hw, device=self.device, profile=self.profile))
        self._last_embedding = (key, embedding)
        return embedding

    @torch.inference_mode()
    def predict(
        self,
        embedding: ImageEmbedding,
        *,
        boxes=None,
        points=None,
        point_labels=None,
        mask_input=None,
        multimask: bool = False,
    ) -> Prediction:
        """SAM's masks for N prompts of the image of ``embedding``, decoded ``batch`` prompts at a time.

        A prompt is a box, points, or both, optionally with a mask input; prompt ``i`` is row ``i`` of
        every argument given. The answer of a prompt does not depend on the others (up to the float
        rounding of batched products: ~1e-7 in the logits between a prompt alone and in a batch).

        Args:
            embedding: from :meth:`set_image`.
            boxes: float (N, 4) xyxy in image pixels.
            points: float (N, P, 2) xy in image pixels.
            point_labels: int (N, P): 1 positive, 0 negative (-1 padding: SAM's not-a-point token).
            mask_input: float (N, 256, 256) low-res logits from an earlier prediction (``pred.logits[:, k]``).
            multimask: three candidates per prompt (SAM's answer to ambiguous prompts such as one point)
                instead of one.

        Returns:
            A :class:`Prediction` with K = 3 if ``multimask`` else 1.

        Raises:
            ValueError: prompts of the wrong shape, count or values, or an embedding of another model.
        """
        if not isinstance(embedding, ImageEmbedding) or embedding.arch != self.arch:
            got = embedding.arch if isinstance(embedding, ImageEmbedding) else type(embedding).__name__
            raise ValueError(f"embedding: expected an ImageEmbedding from this {self.arch} segmenter, got {got}")
        if not isinstance(multimask, bool):
            raise ValueError(f"multimask: expected True or False, got {multimask!r}")
        prompts = prepare_prompts(
            embedding.hw,
            boxes=boxes,
            points=points,
            point_labels=point_labels,
            mask_input=mask_input,
            device=self.device,
            dtype=self.reference.dtype,
            profile=self.profile,
        )
        logits, scores = self._decode(embedding.features, prompts, multimask=multimask)
        return Prediction(logits.float(), scores.float().cpu().numpy(), self.threshold, embedding.upsampler)

    def _decode(self, features, prompts: Prompts, *, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = prompts.n, 3 if multimask else 1
        if n == 0:
            side = self.profile.lowres
            return torch.zeros((0, k, side, side), device=self.device), torch.zeros((0, k))
        parts = []
        with torch_threads():
            for start in range(0, n, self.batch):
                parts.append(self.backend.decode(features, prompts[start : start + self.batch], multimask=multimask))
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def __call__(self, rgb: np.ndarray, instances: Instances) -> Instances:
        """Segment the instances of one image that have no mask yet, prompted with their boxes.

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
        embedding = self.set_image(rgb)
        n = len(instances)
        masks, scores = list(instances.masks), instances.mask_score.copy()
        stability = np.full(n, np.nan)
        extras = {}
        if self.multimask != "off":
            extras = {"multimask_index": np.full(n, -1, dtype=np.int64), "candidate_scores": np.full((n, 3), np.nan)}
        t = self.threshold
        with torch_threads():  # once for the image, not per mask
            for start in range(0, len(todo), self.batch):  # one chunk's full-size work at a time
                chunk = todo[start : start + self.batch]
                pred = self.predict(embedding, boxes=instances.xyxy[chunk], multimask=self.multimask != "off")
                for k, i in enumerate(chunk):
                    choice = 0
                    if self.multimask != "off":
                        candidates = [pred.mask(k, c) for c in range(pred.scores.shape[1])]
                        choice = choose_candidate(candidates, pred.scores[k], instances.xyxy[i], self.multimask)
                        extras["multimask_index"][i] = choice
                        extras["candidate_scores"][i] = pred.scores[k]
                    # the mask at t and SAM's stability score (masks at t + 1 and t - 1, as segment-anything: offset 1)
                    masks[i], stability[i] = pred.upsampler.mask_and_stability(pred.logits[k, choice], t)
                    scores[i] = pred.scores[k, choice]
        out = instances.replace(masks=tuple(masks), mask_score=scores)
        return out.with_extras(stability_score=np.round(stability, 4), **extras)


def check_runtime(arch: str, runtime: str) -> str:
    """The runtime ``arch`` runs on for ``runtime``: ``runtime`` itself, or ``torch`` for a torch-only architecture
    (SAM 3: ``Profile.torch_only``) asked for ``auto``.

    Raises:
        SamlabelError: ``runtime="onnx"`` for a torch-only architecture.
    """
    if runtime == "torch" or not profile_of(arch).torch_only:
        return runtime
    if runtime == "onnx":
        raise SamlabelError(
            f"--runtime onnx: the {arch} segmenter runs on PyTorch only (it has no ONNX Runtime export here); "
            "pass --runtime torch, or leave --runtime out"
        )
    return "torch"


def select_backend(runtime: str, reference: TorchBackend, *, weights: Path, cache_dir: str | Path | None):
    """The backend for ``runtime``: ``reference`` itself, or an ONNX backend built on it.

    ``onnx`` exports what is missing from the cache, checks each graph against PyTorch once and
    raises on any failure; ``auto`` does that on CPU and keeps PyTorch (the reference) with a warning
    when it fails (no onnxruntime, unwritable cache, failed check).

    Raises:
        SamlabelError: ``runtime="onnx"`` and ONNX Runtime cannot be set up.
    """
    if runtime == "torch" or (runtime == "auto" and reference.device.type != "cpu"):
        return reference
    from pipeline.sam import onnx_backend
    from pipeline.sam.onnx_cache import OnnxCache

    cache = OnnxCache(weights, arch=reference.arch, cache_dir=cache_dir)
    try:
        with torch_threads():
            backend = onnx_backend.OnnxBackend(reference, cache, strict=runtime == "onnx")
    except onnx_backend.ONNX_FAILURES as e:
        if runtime == "onnx":
            raise SamlabelError(onnx_backend.failure_message(e, cache=cache)) from None
        LOGGER.warning("ONNX Runtime not used for %s (%s); using PyTorch", weights.name, e)
        return reference
    if backend.box_decoder is not None:
        LOGGER.info("SAM image encoder and decoders run on ONNX Runtime (cache %s)", cache.dir)
    else:  # SAM2's and HQ-SAM's decoders have no ONNX export
        LOGGER.info("SAM image encoder runs on ONNX Runtime (cache %s); the %s decoder has no ONNX export and "
                    "runs on PyTorch", cache.dir, reference.arch)  # fmt: skip
    return backend
