"""Export SAM's image encoder and SAM-1 decoders to ONNX files, atomically.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: on torch 2.14 it
exports MobileSAM's encoder in ~3-6 s and matches PyTorch to ~1e-5, while the dynamo exporter
additionally needs the ``onnxscript`` package. Files are written in a private temporary folder beside
their destination and moved into place with ``os.replace``, so readers never see a partial file.
Where the files go is :mod:`pipeline.sam.onnx_cache`'s business; that they match PyTorch is checked
by :mod:`pipeline.sam.onnx_backend`.

Encoder outputs: a single tensor (SAM / MobileSAM: ``(1, 256, S/16, S/16)``) or a dict whose values are
tensors or lists of tensors (SAM2 ``ImageEncoder``: ``vision_features``, ``vision_pos_enc``,
``backbone_fpn``). The dict structure is encoded in the ONNX output names (``key`` or ``key.<index>``)
and rebuilt by :func:`unflatten_outputs`.
"""

from __future__ import annotations

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

import torch

logger = logging.getLogger(__name__)

#: ONNX opset used for export. 17 has a native LayerNormalization and is supported by the torch >= 2.0
#: exporter and onnxruntime >= 1.16 (opset 20 was measured too: same speed, same accuracy).
DEFAULT_OPSET = 17

#: Name of the encoder's ONNX input and, for single-tensor encoders, of its ONNX output.
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"

# The graphs' cache names (their versions) are in pipeline.sam.onnx_sessions, which needs no PyTorch.

EncoderOutput = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


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


def unflatten_outputs(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> EncoderOutput:
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

    The file is written in a private temporary directory beside ``path`` and moved into place with
    ``os.replace``, so readers never see a partial file. Models over protobuf's 2 GiB
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
        except (TypeError, OSError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever a forward at this size raises means: it does not run
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
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the export failed
            raise RuntimeError(
                f"ONNX export of {type(encoder).__name__} at {image_size}x{image_size} (opset {opset}) failed: {e}"
            ) from e
        for w in caught:  # tracer / deprecation noise; the numerics are checked against PyTorch by onnx_backend
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


def export_box_decoder(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, path: Path) -> Path:
    """Export :class:`pipeline.sam.box_decoder.BoxDecoder` of a SAM-1 family model to ``path``.

    Inputs ``embedding`` (1, 256, 64, 64) and ``boxes`` (N, 4) in encoder-input pixels, any N >= 1;
    outputs ``logits`` (N, 1, 256, 256) and ``scores`` (N, 1).
    """
    from pipeline.sam.box_decoder import BoxDecoder

    boxes = torch.tensor([[100.0, 100.0, 400.0, 300.0], [0.0, 0.0, 1024.0, 768.0]])
    return _export_graph(
        BoxDecoder(prompt_encoder, mask_decoder).eval(),
        (torch.zeros(1, 256, 64, 64), boxes),
        path,
        inputs={"embedding": {}, "boxes": {0: "n"}},
        outputs={"logits": {0: "n"}, "scores": {0: "n"}},
    )


def export_prompt_decoder(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, path: Path) -> Path:
    """Export :class:`pipeline.sam.prompt_decoder.PromptDecoder` of a SAM-1 family model to ``path``.

    Inputs ``embedding`` (1, 256, 64, 64), ``point_coords`` (N, P, 2) in encoder-input pixels,
    ``point_labels`` (N, P) float (-1 padding, 0 / 1 negative / positive, 2 / 3 box corners),
    ``mask_input`` (N, 1, 256, 256) and ``has_mask_input`` (1,), any N, P >= 1; outputs ``logits``
    (N, 4, 256, 256) and ``scores`` (N, 4), mask token 0 (single mask) first.
    """
    from pipeline.sam.prompt_decoder import PromptDecoder

    coords = torch.tensor([[[100.0, 100.0], [400.0, 300.0], [0.0, 0.0]], [[5.0, 7.0], [10.0, 20.0], [500.0, 400.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    return _export_graph(
        PromptDecoder(prompt_encoder, mask_decoder).eval(),
        (torch.zeros(1, 256, 64, 64), coords, labels, torch.zeros(2, 1, 256, 256), torch.ones(1)),
        path,
        inputs={
            "embedding": {},
            "point_coords": {0: "n", 1: "p"},
            "point_labels": {0: "n", 1: "p"},
            "mask_input": {0: "n"},
            "has_mask_input": {},
        },
        outputs={"logits": {0: "n"}, "scores": {0: "n"}},
    )


def export_point_decoder(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, path: Path) -> Path:
    """Export :class:`pipeline.sam.point_decoder.PointDecoder` of a SAM-1 family model to ``path``.

    Inputs ``embedding`` (1, 256, 64, 64), ``point_coords`` (N, P, 2) in encoder-input pixels and
    ``point_labels`` (N, P) float (-1 padding, 0 / 1 negative / positive, 2 / 3 box corners), any N, P >= 1;
    outputs ``logits`` (N, 4, 256, 256) and ``scores`` (N, 4), mask token 0 (single mask) first.
    """
    from pipeline.sam.point_decoder import PointDecoder

    coords = torch.tensor([[[100.0, 100.0], [400.0, 300.0], [0.0, 0.0]], [[5.0, 7.0], [10.0, 20.0], [500.0, 400.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    return _export_graph(
        PointDecoder(prompt_encoder, mask_decoder).eval(),
        (torch.zeros(1, 256, 64, 64), coords, labels),
        path,
        inputs={"embedding": {}, "point_coords": {0: "n", 1: "p"}, "point_labels": {0: "n", 1: "p"}},
        outputs={"logits": {0: "n"}, "scores": {0: "n"}},
    )


def _export_graph(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
) -> Path:
    """Export a small (< 2 GiB) graph with the given input / output names and free axes, atomically.

    Raises:
        RuntimeError: the export fails.
        OSError: ``path``'s folder cannot be written.
    """
    path = Path(path)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer noise; the numerics are checked against PyTorch
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(tmpdir / path.name),
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_axes={k: v for k, v in {**inputs, **outputs}.items() if v},
                    opset_version=DEFAULT_OPSET,
                    do_constant_folding=True,
                    **_legacy_export_kwargs(),
                )
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the export failed
                raise RuntimeError(f"ONNX export of {type(module).__name__} failed: {e}") from e
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    logger.info("exported %s to %s in %.1f s", type(module).__name__, path, time.perf_counter() - t0)
    return path
