"""ONNX Runtime backend for SAM image encoders and the SAM-1 box decoder.

The image encoder dominates SAM's runtime: on a 2-core AVX2 CPU the MobileSAM (TinyViT) encoder takes about
1.3 s per 1024x1024 image in PyTorch (2 threads) and about 0.7 s in ONNX Runtime (SAM2-tiny: ~2.9 s vs
~2.35 s), with outputs matching to ~1e-5. The box decoder (``pipeline.sam.box_decoder.BoxDecoder``, exported
with a free box count) runs at ~27-29 ms per box for 2-8 boxes, against ~40 ms for Ultralytics' decoder
exported as it is and 60-75 ms in PyTorch.
This module exports an encoder to ONNX once, caches the file beside the weights (keyed by the weights'
content hash, so a stale export is never reused), and wraps an ``onnxruntime.InferenceSession`` in a
``torch.nn.Module`` that can replace ``model.image_encoder`` in place.

Typical use::

    path = cached_encoder_path(Path("mobile_sam.pt"))
    if not path.exists():
        export_encoder(model.image_encoder, path)
    onnx_encoder = OnnxEncoder(path)
    self_check(model.image_encoder, onnx_encoder)  # raises ValueError on a bad export
    model.image_encoder = onnx_encoder  # drop-in: same input, same output

``onnx`` and ``onnxruntime`` are optional dependencies (``pip install samlabel[onnx]``); they are imported
lazily so that importing this module never fails.

Supported encoder outputs: a single tensor (SAM / MobileSAM: ``(1, 256, S/16, S/16)``) or a dict whose values
are tensors or lists of tensors (SAM2 ``ImageEncoder``: ``vision_features``, ``vision_pos_enc``,
``backbone_fpn``). The dict structure is encoded in the ONNX output names (``key`` or ``key.<index>``) and
rebuilt by :class:`OnnxEncoder`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: ONNX opset used for export. 17 has a native LayerNormalization and is supported by the torch >= 2.0
#: exporter and onnxruntime >= 1.16 (opset 20 was measured too: same speed, same accuracy).
DEFAULT_OPSET = 17

#: Name of the ONNX input and, for single-tensor encoders, of the ONNX output.
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"

_HASH_CHUNK = 1 << 20
_HASH_LEN = 16
_SELF_CHECK_SEED = 0

EncoderOutput = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]

# (resolved path, size, mtime_ns, inode) -> sha256 hex digest: big checkpoints are hashed once per process.
_hash_memo: dict[tuple[str, int, int, int], str] = {}


def _import_ort() -> Any:
    """Import onnxruntime or raise an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The ONNX runtime backend needs the optional dependencies: pip install 'samlabel[onnx]' "
            "(onnx and onnxruntime)."
        ) from e
    return onnxruntime


_global_pool: bool | None = None  # whether this process's ORT sessions share one thread pool


def session_options(threads: int | None = None) -> Any:
    """ORT session options: every optimization, errors-only logging, and threads that do not fight.

    Sessions created without an explicit ``threads`` share one process-wide intra-op pool (as many
    threads as ``pipeline.threads.default_threads()``). With a pool per session, the encoder's threads
    keep spinning after its call while the decoder's start: measured 0.95 s -> 0.88 s per image
    (encoder + 5 boxes) with the shared pool. If the shared pool cannot be set up (ORT's environment
    already exists), each session gets its own pool without spinning.
    """
    global _global_pool
    ort = _import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; ORT's shape-merge warnings are harmless
    if threads is None and _global_pool is None:
        from pipeline.threads import default_threads

        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(default_threads(), 1)
            _global_pool = True
        except Exception as e:  # noqa: BLE001 - any failure means: fall back to per-session pools
            logger.debug("no shared ONNX Runtime thread pool (%s)", e)
            _global_pool = False
    if threads is None and _global_pool:
        so.use_per_session_threads = False
    else:
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's content, memoized per (path, size, mtime, inode) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _hash_memo.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _hash_memo[key] = digest
    return digest


def cached_encoder_path(weights: Path, *, image_size: int = 1024) -> Path:
    """Return where the ONNX export of ``weights``' image encoder is cached.

    The file lies beside the weights and its name carries the first 16 hex digits of the sha256 of the
    weights file's *content*, so replacing the checkpoint (even under the same name) yields a new cache path
    and a stale export is never used. Example: ``mobile_sam.pt`` ->
    ``mobile_sam.<sha256[:16]>.encoder1024.onnx``. The file itself is not created here; see
    :func:`export_encoder` / :func:`ensure_encoder_onnx`. The name does not depend on the torch / onnx
    versions: an exported graph stays valid across them.

    Args:
        weights: Path to the SAM checkpoint (must exist; it is read to hash it).
        image_size: Square input side ``S`` the encoder is exported for.

    Returns:
        Path of the (possibly not yet existing) ONNX file.

    Raises:
        FileNotFoundError: If ``weights`` does not exist.
    """
    weights = Path(weights)
    digest = _file_sha256(weights)[:_HASH_LEN]
    return weights.with_name(f"{weights.stem}.{digest}.encoder{int(image_size)}.onnx")


def _flat_output_names(out: Any) -> list[str]:
    """Return the ONNX output names for an encoder output.

    ``[OUTPUT_NAME]`` for a tensor; ``key`` / ``key.<i>`` (lists expanded) for a dict.

    Raises:
        TypeError: If the output is neither a tensor nor a dict of tensors / lists of tensors, or a dict that
            flattens to a single tensor (which would be indistinguishable from a plain tensor output).
    """
    if isinstance(out, torch.Tensor):
        return [OUTPUT_NAME]
    if not isinstance(out, dict):
        raise TypeError(f"expected a tensor or a dict of tensors / tensor lists, got {type(out).__name__}")
    names = []
    for key, value in out.items():
        if not isinstance(key, str) or "." in key:
            raise TypeError(f"encoder output key {key!r} must be a str without '.'")
        if isinstance(value, torch.Tensor):
            names.append(key)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
            names.extend(f"{key}.{i}" for i in range(len(value)))
        else:
            raise TypeError(f"unsupported encoder output {key!r} of type {type(value).__name__}")
    if len(names) < 2:
        raise TypeError(f"a dict output must hold at least two tensors, got {names}")
    return names


class _FlattenOutputs(torch.nn.Module):
    """Wrap an encoder that returns a dict so that the traced graph returns a flat tuple of tensors.

    The tuple follows the order of :func:`_flat_output_names` (dict order, lists expanded).
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(image)
        flat: list[torch.Tensor] = []
        for value in out.values():
            flat.extend([value] if isinstance(value, torch.Tensor) else value)
        return tuple(flat)


def _unflatten_outputs(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> EncoderOutput:
    """Rebuild an encoder output from ONNX output names (inverse of :class:`_FlattenOutputs`)."""
    if len(names) == 1:
        return tensors[0]
    out: dict[str, Any] = {}
    for name, tensor in zip(names, tensors, strict=True):
        key, sep, index = name.rpartition(".")
        if sep and index.isdigit():
            lst = out.setdefault(key, [])
            if int(index) != len(lst):
                raise ValueError(f"ONNX outputs of list {key!r} are out of order: {list(names)}")
            lst.append(tensor)
        else:
            out[name] = tensor
    return out


def _legacy_export_kwargs() -> dict[str, Any]:
    """Return the keyword arguments that select the TorchScript-based ("legacy") exporter."""
    params = inspect.signature(torch.onnx.export).parameters
    return {"dynamo": False} if "dynamo" in params else {}


def export_encoder(
    encoder: torch.nn.Module,
    path: Path,
    *,
    image_size: int = 1024,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a SAM image encoder to ONNX, atomically.

    The graph has one float32 input ``image`` of static shape ``(1, 3, S, S)`` (the normalized image the torch
    encoder takes, ``S = image_size``). Its output is the encoder's output: for the SAM-1 family one float32
    tensor ``embedding`` of shape ``(1, 256, S/16, S/16)`` (``(1, 256, 64, 64)`` for ``S = 1024``); for dict
    outputs (SAM2) one ONNX output per tensor, named ``key`` / ``key.<i>``.

    The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: on torch 2.14 it
    exports MobileSAM in ~3-6 s and matches PyTorch to ~1e-5, while the dynamo exporter additionally needs
    the ``onnxscript`` package. The file is written in a private temporary directory beside ``path`` and
    moved into place with ``os.replace``, so readers never see a partial file. Models over protobuf's 2 GiB
    limit (SAM ViT-H) are saved with their weights in one external-data file ``<path>.data`` beside ``path``,
    which is moved into place before ``path``.

    The encoder is traced in eval mode on the device of its parameters and put back in its previous
    train/eval mode afterwards. Its parameters must be float32.

    Args:
        encoder: The torch image encoder, e.g. ``model.image_encoder`` of ``build_mobile_sam()``.
        path: Destination ``.onnx`` file; parent directories are created.
        image_size: Square input side ``S`` in pixels. The encoder must already be configured for it (e.g.
            TinyViT via ``set_imgsz``); the graph is specialised to this size.
        opset: ONNX opset version.

    Returns:
        ``path``.

    Raises:
        RuntimeError: If the encoder does not run at ``image_size`` or the export fails (the message names
            the encoder and the cause).
        TypeError: If the encoder's output is neither a tensor nor a dict of tensors / tensor lists.
        OSError: If ``path``'s directory cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        device = next(encoder.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    dummy = torch.zeros(1, 3, image_size, image_size, dtype=torch.float32, device=device)

    t0 = time.perf_counter()
    was_training = encoder.training
    encoder.eval()
    tmpdir: Path | None = None
    try:
        try:
            with torch.inference_mode():  # one forward: checks the size and finds the outputs
                output_names = _flat_output_names(encoder(dummy))
        except TypeError:
            raise
        except Exception as e:
            raise RuntimeError(
                f"{type(encoder).__name__} does not run on a (1, 3, {image_size}, {image_size}) input: {e}"
            ) from e
        module = encoder if output_names == [OUTPUT_NAME] else _FlattenOutputs(encoder)

        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp_onnx = tmpdir / path.name
        try:
            with warnings.catch_warnings(record=True) as caught, torch.no_grad():
                warnings.simplefilter("always")
                torch.onnx.export(
                    module,
                    (dummy,),
                    str(tmp_onnx),
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    opset_version=opset,
                    do_constant_folding=True,
                    **_legacy_export_kwargs(),
                )
        except Exception as e:
            raise RuntimeError(
                f"ONNX export of {type(encoder).__name__} at {image_size}x{image_size} (opset {opset}) failed: {e}"
            ) from e
        for w in caught:  # tracer / deprecation noise; the numerics are verified by self_check()
            logger.debug("torch.onnx.export warning: %s", w.message)

        if any(p != tmp_onnx for p in tmpdir.iterdir()):
            # > 2 GiB: the exporter wrote one external-data file per tensor; consolidate into '<name>.data'.
            import onnx

            data_name = f"{path.name}.data"
            final_dir = tmpdir / "final"
            final_dir.mkdir()
            model_proto = onnx.load(str(tmp_onnx))  # also loads the external tensors
            onnx.save_model(
                model_proto,
                str(final_dir / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
            )
            del model_proto
            os.replace(final_dir / data_name, path.parent / data_name)
            os.replace(final_dir / path.name, path)
        else:
            os.replace(tmp_onnx, path)
    finally:
        encoder.train(was_training)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    size = path.stat().st_size
    data = path.with_name(f"{path.name}.data")
    if data.exists():
        size += data.stat().st_size
    logger.info(
        "exported %s to %s (%d output(s), %.1f MB, opset %d) in %.1f s",
        type(encoder).__name__,
        path,
        len(output_names),
        size / 1e6,
        opset,
        time.perf_counter() - t0,
    )
    return path


def ensure_encoder_onnx(encoder: torch.nn.Module, weights: Path, *, image_size: int = 1024) -> Path:
    """Return the cached ONNX export for ``weights``, exporting ``encoder`` first if it is missing.

    Args:
        encoder: The torch image encoder built from ``weights``.
        weights: The checkpoint the encoder was loaded from (hashed to key the cache).
        image_size: Square input side ``S``.

    Returns:
        Path of the ONNX file (see :func:`cached_encoder_path`).
    """
    path = cached_encoder_path(weights, image_size=image_size)
    if path.exists():
        logger.debug("using cached ONNX encoder %s", path)
        return path
    return export_encoder(encoder, path, image_size=image_size)


class OnnxEncoder(torch.nn.Module):
    """An ONNX Runtime session that behaves like the torch image encoder it was exported from.

    It is a parameter-free ``torch.nn.Module`` so that it can replace ``model.image_encoder`` in place
    (``.to()``, ``.half()``, ``.eval()`` are no-ops; ``set_imgsz`` only accepts the exported size). Calling it
    takes the same normalized ``(1, 3, S, S)`` tensor as the torch encoder and returns the same structure: a
    ``(1, 256, S/16, S/16)`` tensor for SAM / MobileSAM, the ``dict`` for SAM2. Outputs are returned on the
    input's device with the input's dtype (computation is float32).

    The session uses all graph optimizations (``ORT_ENABLE_ALL``) and ``CUDAExecutionProvider`` first when
    onnxruntime offers it, else ``CPUExecutionProvider``.

    Attributes:
        path: The ONNX file.
        session: The ``onnxruntime.InferenceSession``.
        image_size: Square input side ``S`` the graph was exported for.
        output_names: ONNX output names, in order.
        providers: Execution providers in use.
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        """Open an ONNX Runtime session on an exported encoder.

        Args:
            path: ONNX file written by :func:`export_encoder`.
            threads: ORT intra-op threads; ``None`` lets ORT choose (one per physical core).

        Raises:
            ImportError: If onnxruntime is not installed.
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the graph's input is not a static ``(1, 3, S, S)`` image.
        """
        super().__init__()
        ort = _import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX encoder not found: {self.path}")
        so = session_options(threads)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
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
            "auto" if threads is None else threads,
            time.perf_counter() - t0,
        )

    @property
    def img_size(self) -> int:
        """Square input side, under the attribute name Ultralytics' encoders use."""
        return self.image_size

    @img_size.setter
    def img_size(self, value: int) -> None:
        if int(value) != self.image_size:
            raise ValueError(f"ONNX encoder {self.path.name} was exported for {self.image_size}, not {value}")

    def set_imgsz(self, imgsz: Sequence[int] | None = None) -> None:
        """Accept only the exported size (Ultralytics' ``SAMModel.set_imgsz`` calls this).

        Args:
            imgsz: ``[H, W]``; ``None`` means ``[1024, 1024]``.

        Raises:
            ValueError: If ``imgsz`` differs from the exported ``(S, S)``; re-export for another size.
        """
        hw = list(imgsz) if imgsz is not None else [1024, 1024]
        if hw != [self.image_size, self.image_size]:
            raise ValueError(
                f"ONNX encoder {self.path.name} was exported for {self.image_size}x{self.image_size}, "
                f"not {hw}; export it again for that size"
            )

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        """Encode one normalized image.

        Args:
            image: ``(1, 3, S, S)`` normalized image (any float dtype, any device).

        Returns:
            For SAM / MobileSAM the embedding, ``(1, 256, S/16, S/16)``; for SAM2 the encoder's dict. Tensors
            are on ``image.device`` with ``image.dtype``.

        Raises:
            ValueError: If ``image`` is not ``(1, 3, S, S)``.
        """
        expected = (1, 3, self.image_size, self.image_size)
        if tuple(image.shape) != expected:
            raise ValueError(f"ONNX encoder expects an input of shape {expected}, got {tuple(image.shape)}")
        x = image.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        outs = self.session.run(None, {self._input_name: x})
        tensors = [torch.from_numpy(o).to(device=image.device, dtype=image.dtype) for o in outs]
        return _unflatten_outputs(self.output_names, tensors)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, image_size={self.image_size}, providers={self.providers}"


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


def self_check(torch_encoder: torch.nn.Module, onnx_encoder: OnnxEncoder, *, atol: float = 1e-3) -> float:
    """Compare the ONNX encoder with the torch encoder on one fixed input.

    The input is ``torch.randn(1, 3, S, S)`` from a ``torch.Generator`` seeded with 0 (a plausible normalized
    image; ``S = onnx_encoder.image_size``), cast to the torch encoder's parameter dtype and device. The torch
    encoder runs in eval mode under ``torch.inference_mode()`` and is put back in its previous mode.

    Args:
        torch_encoder: The reference torch image encoder.
        onnx_encoder: The :class:`OnnxEncoder` exported from it.
        atol: Largest acceptable absolute difference.

    Returns:
        The max absolute difference over all output elements (float32 MobileSAM: ~1e-5).

    Raises:
        ValueError: If the outputs differ in structure or shape, contain non-finite values, or differ by
            more than ``atol``.
    """
    size = getattr(onnx_encoder, "image_size", 1024)
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
        d = (r.double().cpu() - o.double().cpu()).abs().max().item()
        if d != d:  # NaN
            raise ValueError(f"ONNX encoder self-check: output {name!r} has non-finite values")
        diff = max(diff, d)
    if diff > atol:
        raise ValueError(
            f"ONNX encoder {getattr(onnx_encoder, 'path', '')} differs from the torch encoder by {diff:.3g} "
            f"(max abs) > atol {atol:g}; delete the file to re-export, or use the torch runtime"
        )
    logger.info("ONNX encoder self-check passed: max abs diff %.3g (atol %g)", diff, atol)
    return diff


# ----------------------------------------------------------------------------------------------- decoder
#: Version of the exported box-decoder graph, in its cache name: a new graph never reuses an old export.
DECODER_TAG = "boxdecoder2"


def cached_decoder_path(weights: Path) -> Path:
    """Where the ONNX box decoder of ``weights`` is cached: beside them, keyed by their content hash."""
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.{_file_sha256(weights)[:_HASH_LEN]}.{DECODER_TAG}.onnx")


def ensure_decoder_onnx(model: torch.nn.Module, weights: Path) -> Path:
    """The cached ONNX box decoder of a SAM-1 family ``model`` (exported atomically when missing).

    The graph is :class:`pipeline.sam.box_decoder.BoxDecoder`: inputs ``embedding`` (1, 256, 64, 64) and
    ``boxes`` (N, 4) in encoder-input pixels, any N >= 1; outputs ``logits`` (N, 1, 256, 256) and
    ``scores`` (N, 1).
    """
    from pipeline.sam.box_decoder import BoxDecoder

    path = cached_decoder_path(weights)
    if path.exists():
        return path
    module = BoxDecoder(model.prompt_encoder, model.mask_decoder).eval()
    embedding = torch.zeros(1, 256, 64, 64)
    boxes = torch.tensor([[100.0, 100.0, 400.0, 300.0], [0.0, 0.0, 1024.0, 768.0]])
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (embedding, boxes),
                str(tmpdir / path.name),
                input_names=["embedding", "boxes"],
                output_names=["logits", "scores"],
                dynamic_axes={"boxes": {0: "n"}, "logits": {0: "n"}, "scores": {0: "n"}},
                opset_version=DEFAULT_OPSET,
                do_constant_folding=True,
                **_legacy_export_kwargs(),
            )
        os.replace(tmpdir / path.name, path)
    except Exception as e:
        raise RuntimeError(f"ONNX export of the SAM mask decoder failed: {e}") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


class OnnxBoxDecoder:
    """ONNX Runtime box decoder: same inputs and outputs as SAM's prompt encoder + mask decoder."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        ort = _import_ort()
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, 1, 256, 256) and scores (N, 1) for ``boxes`` (N, 4) in encoder-input pixels.

        All N boxes go through one call, sharing the image-side work (the caller bounds N).
        """
        emb = embedding.detach().to("cpu", torch.float32).contiguous().numpy()
        xyxy = np.ascontiguousarray(boxes.detach().to("cpu", torch.float32).numpy())
        logits, scores = self.session.run(None, {"embedding": emb, "boxes": xyxy})
        device = embedding.device
        return torch.from_numpy(logits).to(device), torch.from_numpy(scores).to(device)


def decoder_self_check(model: torch.nn.Module, decoder: OnnxBoxDecoder, *, atol: float = 1e-3) -> float:
    """Max abs difference of logits and scores between ``decoder`` and Ultralytics' decoder on fixed inputs.

    Raises:
        ValueError: above ``atol`` or non-finite.
    """
    from pipeline.sam.box_decoder import reference_box_decoder

    g = torch.Generator().manual_seed(_SELF_CHECK_SEED)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    boxes = torch.tensor([[10.0, 20.0, 500.0, 400.0], [600.0, 100.0, 1000.0, 900.0], [0.0, 0.0, 1024.0, 768.0]])
    with torch.inference_mode():
        ref = reference_box_decoder(model.prompt_encoder, model.mask_decoder)(embedding, boxes)
    got = decoder(embedding, boxes)
    diff = max((r.float() - o.float()).abs().max().item() for r, o in zip(ref, got, strict=True))
    if not diff <= atol:
        raise ValueError(f"ONNX mask decoder {decoder.path.name} differs from PyTorch by {diff:.3g} > {atol:g}")
    logger.info("ONNX decoder self-check passed: max abs diff %.3g", diff)
    return diff
