"""SAM on ONNX Runtime: sessions on the exported graphs, each checked against PyTorch once.

The image encoder dominates SAM's runtime: on a 2-core AVX2 CPU the MobileSAM (TinyViT) encoder takes about
1.3 s per 1024x1024 image in PyTorch (2 threads) and about 0.7 s in ONNX Runtime (SAM2-tiny: ~2.9 s vs
~2.35 s), with outputs matching to ~1e-5. The box decoder (:class:`pipeline.sam.box_decoder.BoxDecoder`,
exported with a free box count) runs at ~27-29 ms per box for 2-8 boxes, against ~40 ms for Ultralytics'
decoder exported as it is and 60-75 ms in PyTorch.

:class:`OnnxBackend` has the interface of :class:`pipeline.sam.torch_backend.TorchBackend` (``encode`` /
``decode``) and keeps that backend as its reference:

* SAM-1 family (SAM b/l/h, MobileSAM): the encoder, the box decoder (box-only single-mask prompts), the
  point decoder (:class:`pipeline.sam.point_decoder.PointDecoder`: every other prompt without a mask
  input: points, boxes with points, multimask boxes; the image-side work shared as for boxes) and the
  prompt decoder (:class:`pipeline.sam.prompt_decoder.PromptDecoder`: prompts with a mask input) run on
  ONNX Runtime; the point and prompt decoders are exported the first time such a prompt comes.
* SAM2 / SAM2.1: the encoder runs on ONNX Runtime, the decoder on PyTorch (its high-resolution features
  and its stability-based choice of the single mask are not exported).

Exports live in an :class:`pipeline.sam.onnx_cache.OnnxCache`. ``onnx`` and ``onnxruntime`` are optional
dependencies (``pip install samlabel[onnx]``), imported lazily so that importing this module never fails.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import SamlabelError
from pipeline.sam import onnx_sessions
from pipeline.sam.onnx_cache import CacheWriteError, OnnxCache
from pipeline.sam.onnx_export import (
    EncoderOutput,
    export_box_decoder,
    export_encoder,
    export_point_decoder,
    export_prompt_decoder,
    unflatten_outputs,
)
from pipeline.sam.onnx_sessions import (
    BOX_DECODER,
    ENCODER,
    ENCODER_PROVIDERS,
    POINT_DECODER,
    PROMPT_DECODER,
    open_session,
)
from pipeline.sam.prompts import SAM_INPUT, Prompts
from pipeline.sam.torch_backend import TorchBackend
from pipeline.threads import torch_threads

logger = logging.getLogger(__name__)

_SELF_CHECK_SEED = 0
_CHECK_ATOL = 1e-3


class OnnxEncoder:
    """An ONNX Runtime session that answers like the torch image encoder it was exported from.

    Calling it takes the same normalized ``(1, 3, S, S)`` tensor as the torch encoder and returns the same
    structure: a ``(1, 256, S/16, S/16)`` tensor for SAM / MobileSAM, the ``dict`` for SAM2. Outputs are on
    the input's device with the input's dtype (computation is float32). ``CUDAExecutionProvider`` is used
    first when onnxruntime offers it, else ``CPUExecutionProvider``.

    Attributes:
        path: The ONNX file.
        session: The ``onnxruntime.InferenceSession``.
        image_size: Square input side ``S`` the graph was exported for.
        output_names: ONNX output names, in order.
        providers: Execution providers in use.
    """

    def __init__(self, path: Path, *, threads: int | None = None, session: Any = None) -> None:
        """Open an ONNX Runtime session on an exported encoder (or take ``session``, already open on it).

        Args:
            path: ONNX file written by :func:`pipeline.sam.onnx_export.export_encoder`.
            threads: ORT intra-op threads; ``None`` shares the process-wide pool (see :func:`pipeline.sam.onnx_sessions.session_options`).

        Raises:
            ImportError: If onnxruntime is not installed.
            FileNotFoundError: If ``path`` does not exist.
            RuntimeError: If ONNX Runtime cannot open it.
            ValueError: If the graph's input is not a static ``(1, 3, S, S)`` image.
        """
        self.path = Path(path)
        t0 = time.perf_counter()
        self.session = session or open_session(self.path, threads=threads, providers=ENCODER_PROVIDERS)
        self.providers: list[str] = list(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input, got {[i.name for i in inputs]}")
        self._input_name: str = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape) or shape[:2] != [1, 3] or shape[2] != shape[3]:
            raise ValueError(f"{self.path}: expected a static (1, 3, S, S) input, got {shape}")
        self.image_size: int = shape[2]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        logger.info(
            "ONNX encoder %s: input %s, %d output(s), providers %s, threads %s, loaded in %.2f s",
            self.path.name,
            shape,
            len(self.output_names),
            self.providers,
            "shared" if threads is None else threads,
            time.perf_counter() - t0,
        )

    def __call__(self, image: torch.Tensor) -> EncoderOutput:
        """Encode one normalized ``(1, 3, S, S)`` image (any float dtype, any device).

        Raises:
            ValueError: If ``image`` is not ``(1, 3, S, S)``.
        """
        expected = (1, 3, self.image_size, self.image_size)
        if tuple(image.shape) != expected:
            raise ValueError(f"ONNX encoder expects an input of shape {expected}, got {tuple(image.shape)}")
        x = image.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        outs = self.session.run(None, {self._input_name: x})
        tensors = [torch.from_numpy(o).to(device=image.device, dtype=image.dtype) for o in outs]
        return unflatten_outputs(self.output_names, tensors)


class OnnxBoxDecoder:
    """ONNX Runtime box decoder: (embedding (1, 256, 64, 64), boxes (N, 4) in encoder-input pixels)
    -> (logits (N, 1, 256, 256), scores (N, 1)), on the embedding's device.

    All N boxes go through one call, sharing the image-side work (the caller bounds N).
    """

    def __init__(self, path: Path, *, threads: int | None = None, session: Any = None) -> None:
        self.path = Path(path)
        self.session = session or open_session(self.path, threads=threads, providers=["CPUExecutionProvider"])

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, scores = self.session.run(None, {"embedding": _numpy(embedding), "boxes": _numpy(boxes)})
        device = embedding.device
        return torch.from_numpy(logits).to(device), torch.from_numpy(scores).to(device)


class OnnxPromptDecoder:
    """ONNX Runtime prompt decoder: (embedding (1, 256, 64, 64), coords (N, P, 2) in encoder-input pixels,
    labels (N, P), masks (N, 1, 256, 256) or None) -> (logits (N, 4, 256, 256), scores (N, 4)) of every
    mask token (0: the single mask, 1-3: the multimask candidates), on the embedding's device.

    ``coords`` / ``labels`` hold box corners as points (labels 2 and 3) and SAM's padding point where a
    prompt has no box (:meth:`pipeline.sam.prompts.Prompts.as_points` with ``pad=True``).
    """

    def __init__(self, path: Path, *, threads: int | None = None, session: Any = None) -> None:
        self.path = Path(path)
        self.session = session or open_session(self.path, threads=threads, providers=["CPUExecutionProvider"])

    def __call__(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = coords.shape[0]
        feeds = {
            "embedding": _numpy(embedding),
            "point_coords": _numpy(coords),
            "point_labels": _numpy(labels),
            "mask_input": np.zeros((n, 1, 256, 256), np.float32) if masks is None else _numpy(masks),
            "has_mask_input": np.array([0.0 if masks is None else 1.0], np.float32),
        }
        logits, scores = self.session.run(None, feeds)
        device = embedding.device
        return torch.from_numpy(logits).to(device), torch.from_numpy(scores).to(device)


class OnnxPointDecoder:
    """ONNX Runtime point decoder: (embedding (1, 256, 64, 64), coords (N, P, 2) in encoder-input pixels,
    labels (N, P)) -> (logits (N, 4, 256, 256), scores (N, 4)) of every mask token, on the embedding's
    device; prompts without a mask input, padded as for :class:`OnnxPromptDecoder`. All N prompts go
    through one call, sharing the image-side work (the caller bounds N: the logits are 1 MB per prompt).
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, threads=threads, providers=["CPUExecutionProvider"])

    def __call__(
        self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {"embedding": _numpy(embedding), "point_coords": _numpy(coords), "point_labels": _numpy(labels)}
        logits, scores = self.session.run(None, feeds)
        device = embedding.device
        return torch.from_numpy(logits).to(device), torch.from_numpy(scores).to(device)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


class OnnxBackend:
    """Encode (and, for the SAM-1 family, decode) on ONNX Runtime, with a :class:`TorchBackend` as reference.

    Built in ``torch_threads()`` (the exports and checks run PyTorch). Each graph is exported into
    ``cache`` when missing and checked against PyTorch on fixed inputs the first time it is used with
    these weights (the pass is recorded beside it). See the module doc for what runs where.

    Args:
        reference: the PyTorch backend of the same weights (SAM2 decodes with it; the checks compare with it).
        cache: where the exports of these weights live.
        sessions: sessions already open on checked exports of ``cache``, by graph name (``ENCODER``,
            ``BOX_DECODER``): the segmenter's ONNX box path hands its sessions over instead of opening them again.
        strict: a prompt decoder that cannot be exported or fails its check raises (``True``, for
            ``--runtime onnx``) or falls back to PyTorch with a warning (``False``, for ``auto``).

    Raises:
        ImportError: onnxruntime is missing.
        CacheWriteError: an export is missing and the cache folder cannot be written.
        ValueError / RuntimeError / TypeError: an export fails, or fails its check.
    """

    name = "onnx"

    def __init__(
        self, reference: TorchBackend, cache: OnnxCache, *, strict: bool, sessions: dict[str, Any] | None = None
    ) -> None:
        onnx_sessions.import_ort()
        self.reference = reference
        self.cache = cache
        self.strict = strict
        sessions = sessions or {}  # graph name -> a session already open on its checked export (not opened twice)
        encoder = reference.image_encoder
        path = cache.ensure(ENCODER, lambda p: export_encoder(encoder, p, image_size=SAM_INPUT))
        self.encoder = OnnxEncoder(path, session=sessions.get(ENCODER))
        cache.check_once(path, lambda: encoder_self_check(encoder, self.encoder))
        self._parts = reference.decoder_parts()
        self.box_decoder: OnnxBoxDecoder | None = None
        if self._parts is not None:
            path = cache.ensure(BOX_DECODER, lambda p: export_box_decoder(*self._parts, p))
            self.box_decoder = OnnxBoxDecoder(path, session=sessions.get(BOX_DECODER))
            cache.check_once(path, lambda: box_decoder_self_check(*self._parts, self.box_decoder))
        self._lazy: dict[str, OnnxPromptDecoder | OnnxPointDecoder] = {}  # graph name -> checked decoder
        self._lazy_errors: dict[str, str] = {}  # graph name -> why it is not used (``strict`` off)

    @property
    def device(self) -> torch.device:
        return self.reference.device

    def encode(self, image: torch.Tensor):
        """Decoder-ready features of one encoder input: the ONNX encoder, then the reference's feature step."""
        return self.reference.features(self.encoder(image))

    def decode(self, features, prompts: Prompts, *, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`TorchBackend.decode`: logits (N, K, 256, 256), scores (N, K)."""
        if self._parts is None:  # SAM2: the decoder stays on PyTorch
            return self.reference.decode(features, prompts, multimask=multimask)
        if prompts.box_only and not multimask:
            return self.box_decoder(features, prompts.boxes)
        # Points without a mask input: the point decoder. Box-only multimask prompts (``--multimask``) stay on the
        # prompt decoder, whose masks they have always had (the two agree to float rounding, not to the bit).
        decoder = (
            self.point_decoder() if prompts.masks is None and prompts.points is not None else self.prompt_decoder()
        )
        if decoder is None:
            return self.reference.decode(features, prompts, multimask=multimask)
        coords, labels = prompts.as_points(box_first=False, pad=True)
        if isinstance(decoder, OnnxPointDecoder):
            logits, scores = decoder(features, coords, labels)
        else:
            logits, scores = decoder(features, coords, labels, prompts.masks)
        tokens = slice(1, None) if multimask else slice(0, 1)
        return logits[:, tokens], scores[:, tokens]

    def prompt_decoder(self) -> OnnxPromptDecoder | None:
        """The checked prompt decoder (prompts with a mask input), exported on first use; ``None`` when it
        failed and ``strict`` is off.

        Raises:
            SamlabelError: it cannot be had and ``strict`` is on (see :func:`failure_message`).
        """
        return self._lazy_decoder(PROMPT_DECODER, export_prompt_decoder, OnnxPromptDecoder, prompt_decoder_self_check)

    def point_decoder(self) -> OnnxPointDecoder | None:
        """The checked point decoder (prompts with points and without a mask input), exported on first use;
        ``None`` when it failed and ``strict`` is off.

        Raises:
            SamlabelError: it cannot be had and ``strict`` is on (see :func:`failure_message`).
        """
        return self._lazy_decoder(POINT_DECODER, export_point_decoder, OnnxPointDecoder, point_decoder_self_check)

    def _lazy_decoder(self, graph: str, export, session, check):
        if graph not in self._lazy and graph not in self._lazy_errors:
            try:
                with torch_threads():
                    path = self.cache.ensure(graph, lambda p: export(*self._parts, p))
                    decoder = session(path)
                    self.cache.check_once(path, lambda: check(*self._parts, decoder))
                self._lazy[graph] = decoder
            except ONNX_FAILURES as e:
                if self.strict:
                    raise SamlabelError(failure_message(e, cache=self.cache)) from None
                self._lazy_errors[graph] = str(e)
                logger.warning("ONNX decoder %s not used (%s); decoding these prompts with PyTorch", graph, e)
        return self._lazy.get(graph)


#: What setting up ONNX Runtime can raise: missing package, unwritable cache, failed export or check.
ONNX_FAILURES = (ImportError, ValueError, RuntimeError, OSError, TypeError)


def failure_message(error: BaseException, *, cache: OnnxCache) -> str:
    """One line for ``--runtime onnx``: what failed (one of :data:`ONNX_FAILURES`) and the fix."""
    name, detail = cache.weights.name, " ".join(str(error).split())  # one line, whatever the cause printed
    if isinstance(error, ImportError):
        return (
            f"--runtime onnx: cannot use ONNX Runtime for {name} ({detail}); "
            "install it with `pip install samlabel[onnx]` or use --runtime torch"
        )
    if isinstance(error, CacheWriteError):
        return f"--runtime onnx: {detail}; pass a writable --cache-dir or use --runtime torch"
    return f"--runtime onnx: cannot use ONNX Runtime for {name} ({detail}); use --runtime torch"


# ------------------------------------------------------------------------------------------------ checks
def _flatten(out: Any) -> list[tuple[str, torch.Tensor]]:
    """Flatten an encoder output to ``(name, tensor)`` pairs for comparison."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict):
        pairs = []
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                pairs.append((str(k), v))
            else:
                pairs.extend((f"{k}.{i}", t) for i, t in enumerate(v))
        return pairs
    raise TypeError(f"unsupported encoder output type {type(out).__name__}")


def encoder_self_check(
    torch_encoder: torch.nn.Module, onnx_encoder: OnnxEncoder, *, atol: float = _CHECK_ATOL
) -> float:
    """Compare the ONNX encoder with the torch encoder on one fixed input.

    The input is ``torch.randn(1, 3, S, S)`` from a ``torch.Generator`` seeded with 0 (a plausible normalized
    image; ``S = onnx_encoder.image_size``), cast to the torch encoder's parameter dtype and device. The torch
    encoder runs in eval mode under ``torch.inference_mode()`` and is put back in its previous mode.

    Returns:
        The max absolute difference over all output elements (float32 MobileSAM: ~1e-5).

    Raises:
        ValueError: If the outputs differ in structure or shape, contain non-finite values, or differ by
            more than ``atol``.
    """
    size = onnx_encoder.image_size
    try:
        param = next(torch_encoder.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    g = torch.Generator().manual_seed(_SELF_CHECK_SEED)
    x = torch.randn(1, 3, size, size, generator=g).to(device=device, dtype=dtype)

    was_training = torch_encoder.training
    torch_encoder.eval()
    try:
        with torch.inference_mode():
            ref = _flatten(torch_encoder(x))
            got = _flatten(onnx_encoder(x))
    finally:
        torch_encoder.train(was_training)

    if [n for n, _ in ref] != [n for n, _ in got]:
        raise ValueError(f"ONNX encoder outputs {[n for n, _ in got]} do not match torch outputs {[n for n, _ in ref]}")
    diff = 0.0
    for (name, r), (_, o) in zip(ref, got, strict=True):
        if r.shape != o.shape:
            raise ValueError(f"ONNX encoder output {name!r} has shape {tuple(o.shape)}, torch {tuple(r.shape)}")
        diff = max(diff, _max_diff(f"ONNX encoder output {name!r}", r, o))
    if diff > atol:
        raise ValueError(
            f"ONNX encoder {onnx_encoder.path.name} differs from the torch encoder by {diff:.3g} "
            f"(max abs) > atol {atol:g}; delete the file to re-export, or use the torch runtime"
        )
    logger.info("ONNX encoder self-check passed: max abs diff %.3g (atol %g)", diff, atol)
    return diff


_CHECK_BOXES = [[10.0, 20.0, 500.0, 400.0], [600.0, 100.0, 1000.0, 900.0], [0.0, 0.0, 1024.0, 768.0]]


def box_decoder_self_check(
    prompt_encoder, mask_decoder, decoder: OnnxBoxDecoder, *, atol: float = _CHECK_ATOL
) -> float:
    """Max abs difference of logits and scores between ``decoder`` and Ultralytics' decoder on fixed boxes.

    Raises:
        ValueError: above ``atol`` or non-finite.
    """
    from pipeline.sam.box_decoder import reference_box_decoder

    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(_SELF_CHECK_SEED))
    boxes = torch.tensor(_CHECK_BOXES)
    with torch.inference_mode():
        ref = reference_box_decoder(prompt_encoder, mask_decoder)(embedding, boxes)
    got = decoder(embedding, boxes)
    return _check_decoder(decoder.path, ref, got, atol=atol)


def _check_points() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed point prompts of the decoder self-checks: 3 prompts of 2 points, positive and negative."""
    points = torch.tensor([[[200.0, 300.0], [250.0, 320.0]], [[700.0, 500.0], [20.0, 40.0]], [[5.0, 5.0], [900, 700]]])
    return points, torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.int32)


def prompt_decoder_self_check(
    prompt_encoder, mask_decoder, decoder: OnnxPromptDecoder, *, atol: float = _CHECK_ATOL
) -> float:
    """Max abs difference of every mask token's logits and scores between ``decoder`` and Ultralytics'
    prompt encoder + mask decoder, on fixed prompts: points alone (with SAM's padding point), and boxes
    with points and a mask input.

    Raises:
        ValueError: above ``atol`` or non-finite.
    """
    from pipeline.sam.prompt_decoder import reference_prompt_decoder

    g = torch.Generator().manual_seed(_SELF_CHECK_SEED)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    points, labels = _check_points()
    masks = 4 * torch.randn(3, 1, 256, 256, generator=g)
    boxes = torch.tensor(_CHECK_BOXES)
    reference = reference_prompt_decoder(prompt_encoder, mask_decoder)
    diff = 0.0
    for p, m in [(Prompts(points=points, labels=labels), None), (Prompts(boxes, points, labels), masks)]:
        with torch.inference_mode():
            ref = reference(embedding, points, labels, p.boxes, m)
        got = decoder(embedding, *p.as_points(box_first=False, pad=True), m)
        diff = max(diff, _check_decoder(decoder.path, ref, got, atol=atol))
    return diff


def point_decoder_self_check(
    prompt_encoder, mask_decoder, decoder: OnnxPointDecoder, *, atol: float = _CHECK_ATOL
) -> float:
    """Max abs difference of every mask token's logits and scores between ``decoder`` and Ultralytics'
    prompt encoder + mask decoder, on fixed prompts: points alone (with SAM's padding point), and boxes
    with points.

    Raises:
        ValueError: above ``atol`` or non-finite.
    """
    from pipeline.sam.prompt_decoder import reference_prompt_decoder

    g = torch.Generator().manual_seed(_SELF_CHECK_SEED)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    points, labels = _check_points()
    reference = reference_prompt_decoder(prompt_encoder, mask_decoder)
    diff = 0.0
    for p in [Prompts(points=points, labels=labels), Prompts(torch.tensor(_CHECK_BOXES), points, labels)]:
        with torch.inference_mode():
            ref = reference(embedding, points, labels, p.boxes)
        got = decoder(embedding, *p.as_points(box_first=False, pad=True))
        diff = max(diff, _check_decoder(decoder.path, ref, got, atol=atol))
    return diff


def _check_decoder(path: Path, ref, got, *, atol: float) -> float:
    diff = max(_max_diff(f"ONNX mask decoder {path.name}", r, o) for r, o in zip(ref, got, strict=True))
    if diff > atol:
        raise ValueError(f"ONNX mask decoder {path.name} differs from PyTorch by {diff:.3g} > {atol:g}")
    logger.info("ONNX decoder %s self-check passed: max abs diff %.3g", path.name, diff)
    return diff


def _max_diff(what: str, ref: torch.Tensor, got: torch.Tensor) -> float:
    if ref.shape != got.shape:
        raise ValueError(f"{what} has shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    d = (ref.double().cpu() - got.double().cpu()).abs().max().item()
    if d != d:  # NaN
        raise ValueError(f"{what}: non-finite values in the self-check")
    return d
