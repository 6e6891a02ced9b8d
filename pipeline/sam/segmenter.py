"""The SAM stage: one image-encoder pass per image, then any number of cheap prompt decodes.

``set_image`` encodes an image once; ``predict`` decodes boxes, points (with labels), both, and
earlier low-resolution masks fed back, as segment-anything's ``SamPredictor`` does. Calling the
segmenter on an image's instances is ``predict`` with their boxes, in bounded batches.

Masks are upsampled here (:mod:`pipeline.sam.upsample`) rather than by Ultralytics' postprocess,
which drops masks scoring under its ``conf`` and so loses track of which prompt a mask belongs to,
and which holds every full-size float mask of an image at once.

Calling the stage on box prompts of a SAM-1 model on the CPU, whose ONNX exports are in the cache and checked, needs
neither PyTorch nor Ultralytics (:class:`OnnxBoxPath`): a run starts about 2 s sooner on a 2-core CPU (importing
PyTorch and building the model), and the model is built only when something else asks for it (points, mask inputs,
multimask, the review, the automatic mask generator), with the open sessions handed over.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import options
from pipeline.errors import SamlabelError
from pipeline.quality import MULTIMASK, choose_candidate
from pipeline.sam.build import load_sam, resolve_arch
from pipeline.sam.profiles import SAM1_ARCHS, SAM1_THRESHOLD, profile_of, sam1_input
from pipeline.sam.upsample import Upsampler
from pipeline.threads import torch_threads
from pipeline.types import CropMask, Instances
from pipeline.weights import resolve_weights

if TYPE_CHECKING:
    import torch

    from pipeline.sam.prompts import Prompts
    from pipeline.sam.torch_backend import Features, TorchBackend

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
            it also preprocesses images. Built on first use when the ONNX box path started the segmenter.
        profile: how the architecture is pre- and postprocessed (:mod:`pipeline.sam.profiles`).
        backend: what encodes and decodes: ``reference`` or an ``OnnxBackend`` built on it (built with ``reference``).
        threshold: the model's mask logit threshold.

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
        self.profile = profile_of(self.arch)
        self._setup = (path, device, runtime, cache_dir)
        self._reference: TorchBackend | None = None
        self._backend: Any = None
        self.runtime: str = "onnx"  # the ONNX box path's; _build sets the built backend's
        self.threshold: float = SAM1_THRESHOLD  # the model's mask logit threshold (SAM-1's until the model says)
        # Box prompts without PyTorch when the checked exports are there; the model is built on the first other use.
        self._boxes = (
            OnnxBoxPath.open(path, self.arch, cache_dir) if _box_path_applies(self.arch, runtime, device) else None
        )
        if self._boxes is None:
            self._build()
        # Prompts per decoder call. PyTorch's decoder copies the image embedding per box and gets slower per box
        # as the chunk grows on CPU (cache-bound: 68 ms/box at 4, 126 ms at 32); the ONNX box decoder shares
        # the image-side work of a chunk (26-29 ms/box from 2 to 8 boxes, 34 ms for one).
        on_cpu = self._boxes is not None or self.device.type == "cpu"
        fast_boxes = self._boxes is not None or getattr(self._backend, "box_decoder", None) is not None
        self.batch = batch or (32 if not on_cpu else 8 if fast_boxes else 4)
        self._last_embedding: tuple[tuple, ImageEmbedding] | None = None  # (image key, embedding), see set_image
        self._last_boxes: tuple[tuple, np.ndarray] | None = None  # (image key, embedding) of the ONNX box path

    def _build(self) -> None:
        """Build the PyTorch model, its backend and the runtime's backend (once; sessions already open are reused)."""
        from pipeline.sam.torch_backend import make_backend

        path, device, runtime, cache_dir = self._setup
        with torch_threads():  # building the model runs PyTorch too
            model = load_sam(path, self.arch)
        self._reference = make_backend(model, arch=self.arch, device=device)  # PyTorch; also the preprocessing
        sessions = self._boxes.sessions if self._boxes is not None else None
        self._backend = select_backend(runtime, self._reference, weights=path, cache_dir=cache_dir, sessions=sessions)
        self.runtime = self._backend.name
        self.threshold = float(self._reference.threshold)

    @property
    def reference(self) -> TorchBackend:
        """The PyTorch backend (built on first use when the ONNX box path started the segmenter)."""
        if self._reference is None:
            self._build()
        assert self._reference is not None  # _build made it
        return self._reference

    @property
    def backend(self):
        """What encodes and decodes: ``reference`` or an ``OnnxBackend`` built on it."""
        if self._backend is None:
            self._build()
        return self._backend

    @property
    def device(self) -> torch.device:
        return self.reference.device

    def set_image(self, rgb: np.ndarray) -> ImageEmbedding:
        """Encode one uint8 (H, W, 3) RGB image (the image-encoder pass; the last image's embedding is kept and
        given back when the same pixels come again)."""
        import torch

        rgb = _checked_rgb(rgb)
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        # The same pixels as the last call give its embedding back (no second encoder pass): the automatic
        # mask generator runs right after the box prompts of the same image (``--propose``).
        key = _image_key(rgb)
        if self._last_embedding is not None and self._last_embedding[0] == key:
            return self._last_embedding[1]
        backend, reference = self.backend, self.reference
        with torch_threads(), torch.inference_mode():
            if self._last_boxes is not None and self._last_boxes[0] == key:  # the box path's encoding of these pixels
                features = reference.features(
                    torch.from_numpy(self._last_boxes[1]).to(reference.device, reference.dtype)
                )
            else:
                features = backend.encode(reference.preprocess(rgb))
        embedding = ImageEmbedding(features, hw, self.arch, Upsampler(hw, device=self.device, profile=self.profile))
        self._last_embedding = (key, embedding)
        return embedding

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
        import torch

        from pipeline.sam.prompts import prepare_prompts

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
        with torch.inference_mode():
            logits, scores = self._decode(embedding.features, prompts, multimask=multimask)
        return Prediction(logits.float(), scores.float().cpu().numpy(), self.threshold, embedding.upsampler)

    def _decode(self, features, prompts: Prompts, *, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

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
        if self._boxes is not None and self.multimask == "off":
            return self._call_boxes(rgb, instances, todo)
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

    def _call_boxes(self, rgb: np.ndarray, instances: Instances, todo: list[int]) -> Instances:
        """``__call__`` on the ONNX box path, in numpy: the same masks, scores and stability as the PyTorch-side path
        (the same sessions and float32 box scaling; the upsampling products agree to float rounding)."""
        boxes = self._boxes
        assert boxes is not None  # __call__ comes here only then
        rgb = _checked_rgb(rgb)
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        key = _image_key(rgb)
        if self._last_boxes is None or self._last_boxes[0] != key:
            self._last_boxes = (key, boxes.encode(rgb))
        embedding = self._last_boxes[1]
        upsampler = Upsampler(hw, device=None, profile=self.profile)
        masks, scores = list(instances.masks), instances.mask_score.copy()
        stability = np.full(len(instances), np.nan)
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            logits, found = boxes.decode(embedding, self.profile.scale_boxes(instances.xyxy[chunk], hw))
            for k, i in enumerate(chunk):
                masks[i], stability[i] = upsampler.mask_and_stability(logits[k, 0], self.threshold)
                scores[i] = found[k, 0]
        out = instances.replace(masks=tuple(masks), mask_score=scores)
        return out.with_extras(stability_score=np.round(stability, 4))


def _checked_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"rgb: expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    return rgb


def _image_key(rgb: np.ndarray) -> tuple:
    """What tells two images apart: their size and a hash of their pixels."""
    hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    return hw, hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=16).digest()


def _box_path_applies(arch: str, runtime: str, device: str | None) -> bool:
    """Whether the ONNX box path can serve ``arch`` (:class:`OnnxBoxPath`): a SAM-1 model on ONNX Runtime on the CPU.

    ``device=None`` is the CPU unless this machine has a GPU that Ultralytics would pick (``auto`` then means PyTorch
    there): an NVIDIA or AMD (ROCm) device node says so without importing PyTorch.
    """
    if arch not in SAM1_ARCHS or runtime not in ("auto", "onnx"):
        return False
    if device is None or str(device).strip() == "":
        return not any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))
    return str(device).strip().lower() == "cpu"


class OnnxBoxPath:
    """Box prompts of a SAM-1 model on its checked ONNX exports, with numpy and ONNX Runtime alone.

    The encoder input is Ultralytics' SAM preprocessing (:func:`pipeline.sam.profiles.sam1_input`), the boxes are
    scaled as :func:`pipeline.sam.prompts.prepare_prompts` scales them, and the two sessions are those the
    ``OnnxBackend`` opens (it takes them over when the model is built), so the answers are the same.

    Attributes:
        sessions: the open sessions by graph name (``ENCODER``, ``BOX_DECODER``).
    """

    def __init__(self, sessions: dict[str, Any]) -> None:
        from pipeline.sam.onnx_sessions import BOX_DECODER, ENCODER

        self.sessions = sessions
        self._encoder, self._decoder = sessions[ENCODER], sessions[BOX_DECODER]
        inputs, outputs = self._encoder.get_inputs(), self._encoder.get_outputs()
        if len(inputs) != 1 or list(inputs[0].shape) != [1, 3, 1024, 1024] or len(outputs) != 1:
            raise ValueError(f"not a SAM-1 encoder export: inputs {[i.shape for i in inputs]}, {len(outputs)} outputs")
        self._input = inputs[0].name

    @classmethod
    def open(cls, weights: Path, arch: str, cache_dir: str | Path | None) -> OnnxBoxPath | None:
        """The box path on the cache's checked exports of ``weights``; ``None`` when they are not all there and
        checked, or ONNX Runtime cannot open them (building the model then exports, checks or reports, as before)."""
        from pipeline.sam import onnx_sessions as ort
        from pipeline.sam.onnx_cache import OnnxCache

        cache = OnnxCache(weights, arch=arch, cache_dir=cache_dir)
        try:
            encoder, decoder = cache.passed(ort.ENCODER), cache.passed(ort.BOX_DECODER)
            if encoder is None or decoder is None:
                return None
            sessions = {
                ort.ENCODER: ort.open_session(encoder, threads=None, providers=ort.ENCODER_PROVIDERS),
                ort.BOX_DECODER: ort.open_session(decoder, threads=None, providers=["CPUExecutionProvider"]),
            }
            path = cls(sessions)
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            LOGGER.debug("ONNX box path not used for %s (%s)", Path(weights).name, e)
            return None
        LOGGER.info("SAM image encoder and decoders run on ONNX Runtime (cache %s)", cache.dir)
        return path

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """float32 (1, 256, 64, 64) image embedding of a uint8 (H, W, 3) RGB image."""
        return self._encoder.run(None, {self._input: sam1_input(rgb)})[0]

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits float32 (N, 1, 256, 256) and scores (N, 1) of boxes (N, 4) in encoder-input pixels."""
        feeds = {"embedding": embedding, "boxes": np.ascontiguousarray(boxes, dtype=np.float32)}
        logits, scores = self._decoder.run(None, feeds)
        return logits, scores


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


def select_backend(
    runtime: str, reference: TorchBackend, *, weights: Path, cache_dir: str | Path | None, sessions: dict | None = None
):
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
            backend = onnx_backend.OnnxBackend(reference, cache, strict=runtime == "onnx", sessions=sessions)
    except onnx_backend.ONNX_FAILURES as e:
        if runtime == "onnx":
            raise SamlabelError(onnx_backend.failure_message(e, cache=cache)) from None
        LOGGER.warning("ONNX Runtime not used for %s (%s); using PyTorch", weights.name, e)
        return reference
    if backend.box_decoder is not None:
        if not sessions:  # else the box path said it when it opened them
            LOGGER.info("SAM image encoder and decoders run on ONNX Runtime (cache %s)", cache.dir)
    else:  # SAM2's and HQ-SAM's decoders have no ONNX export
        LOGGER.info("SAM image encoder runs on ONNX Runtime (cache %s); the %s decoder has no ONNX export and "
                    "runs on PyTorch", cache.dir, reference.arch)  # fmt: skip
    return backend
