"""Offline test checkpoints: random-weight Ultralytics YOLO and SAM models with predictable outputs.

No pretrained weights are needed or downloaded. Both builders use Ultralytics' own model constructors,
seed the random initialisation (without disturbing the caller's global RNG state) and then overwrite a
few output-layer parameters so that the networks give known answers whatever the input image is.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from unittest import mock

import torch
from torch import nn

_SEED = 0


def _logit(p: float) -> float:
    """Return the inverse sigmoid of ``p``."""
    return math.log(p / (1.0 - p))


def make_yolo_checkpoint(path: Path, names: list[str], *, score: float = 0.6, exact: bool = True) -> Path:
    """Write a random-weight YOLOv8n detection checkpoint loadable with ``ultralytics.YOLO(str(path))``.

    The model is built by ``ultralytics.nn.tasks.DetectionModel`` from the packaged ``yolov8n.yaml`` with
    ``nc=len(names)``; its ``names`` become ``dict(enumerate(names))``. In eval mode a freshly initialised
    network has (near) zero activations in the head, so every class logit equals its Detect-head bias.
    The last conv of each classification branch (``model.model[-1].cv3[i][-1]``, levels i = 0, 1, 2 with
    strides 8, 16, 32) is therefore rigged: weight zeroed, bias ``logit(score + 0.01 * i)`` for class
    ``i % nc`` and 8 lower for the other classes. Every anchor of level ``i`` thus predicts class
    ``i % nc`` with confidence ``score + 0.01 * i`` (up to float32 rounding). The coarser levels rank
    first in NMS, so the default ``max_det=300`` on a 640x480 image keeps boxes of several classes.
    Boxes come from the untouched box branch: all DFL bins carry bias 2.0, so each box is a square of
    side ``15 * stride`` centred on its anchor (clipped to the image). With ``conf=0.25`` any image
    therefore yields detections (up to ``max_det`` after NMS) whatever its pixels are.

    Args:
        path: Destination ``.pt`` file; parent directories are created.
        names: Class names, index ``i`` becoming class id ``i``; must be non-empty.
        score: Confidence of the stride-8 level; must satisfy ``0 < score < 0.98``.
        exact: False keeps the random weights of the rigged convs (only their biases are set): confidences
            then vary a little with the image around ``score``, near-tied as an untrained model's are, so
            results are sensitive to the order of floating-point sums (thread count, batching).

    Returns:
        The path written.
    """
    from ultralytics import __version__
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    if not names:
        raise ValueError("names must not be empty")
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["nc"] = len(names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = DetectionModel(cfg=cfg, verbose=False)
    model.names = dict(enumerate(names))
    model.args = {**DEFAULT_CFG_DICT, "task": "detect"}
    with torch.no_grad():
        for i, branch in enumerate(model.model[-1].cv3):
            logit = _logit(score + 0.01 * i)
            conv = branch[-1]
            if exact:
                conv.weight.zero_()
            conv.bias.fill_(logit - 8.0)
            conv.bias[i % len(names)] = logit
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "model": model.eval(),
        "ema": None,
        "train_args": {"task": "detect", "imgsz": 640},
    }
    torch.save(ckpt, path)
    return path


def _set_last_linear(head: nn.Module, value: float) -> None:
    """Make a ``Linear`` or Ultralytics ``MLP`` output ``value`` everywhere by zeroing its last weight."""
    layer = head.layers[-1] if hasattr(head, "layers") else head
    layer.weight.zero_()
    layer.bias.fill_(value)


def make_sam_checkpoint(
    path: Path,
    *,
    mask_logit: float = 8.0,
    score: float = 0.9,
    token_logits: tuple[float, ...] | None = None,
    token_scores: tuple[float, ...] | None = None,
) -> Path:
    """Write a random-weight SAM / SAM2 state dict whose mask decoder answers every prompt identically.

    The architecture is chosen as ``ultralytics.models.sam.build.build_sam`` does, from the end of the
    file name (``mobile_sam.pt``, ``sam_b.pt``, ``sam2_t.pt``, ``sam2.1_t.pt``, ...), and built with
    seeded random weights (loading of the not-yet-existing file is bypassed). The mask decoder
    (``mask_decoder`` for SAM, ``sam_mask_decoder`` for SAM2) is then rigged:

    * ``output_upscaling[-2]`` (last ``ConvTranspose2d``): weight zeroed, bias 1, so after the final
      GELU every upscaled-embedding channel equals ``GELU(1) ~= 0.8413`` at every pixel. For SAM2,
      ``conv_s0``/``conv_s1`` (high-resolution features added inside the upscaling path) are zeroed.
    * ``output_hypernetworks_mlps[k].layers[-1]``: weight zeroed, bias ``mask_logit / (C * GELU(1))``
      with ``C`` upscaled channels, so every low-res (256x256) mask logit equals ``mask_logit``, for
      single- and multi-mask output: a whole-image mask when positive, an empty one when negative.
    * ``iou_prediction_head.layers[-1]``: weight zeroed, bias ``score`` (``logit(score)`` when the head
      ends in a sigmoid, as in SAM2), so every predicted IoU equals ``score``.
    * SAM2 only: ``pred_obj_score_head`` outputs 10 (object present), as in the video/tracking path.

    The file holds ``model.state_dict()`` and loads with ``build_sam(str(path))``.

    Args:
        path: Destination file whose name ends with a key of ``ultralytics.models.sam.build.sam_model_map``.
        mask_logit: Value of every low-resolution mask logit.
        score: Predicted IoU score of every mask, in ``(0, 1)``.
        token_logits: per mask token (token 0: the single mask; 1-3: the multimask candidates), its logit
            instead of ``mask_logit``: candidates that differ (whole-image for positive, empty for negative).
        token_scores: per mask token, its predicted IoU instead of ``score``.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: If the file name does not end with a supported SAM model name.
    """
    from ultralytics.models.sam import build as sam_build

    path = Path(path)
    with torch.random.fork_rng(devices=[]), mock.patch.object(sam_build, "_load_checkpoint", lambda m, _c: m):
        torch.manual_seed(_SEED)
        model = sam_build.build_sam(str(path))
    decoder = getattr(model, "sam_mask_decoder", None) or model.mask_decoder
    with torch.no_grad():
        upscale = decoder.output_upscaling[-2]
        upscale.weight.zero_()
        upscale.bias.fill_(1.0)
        level = float(decoder.output_upscaling[-1](torch.ones(1))[0])
        for k, mlp in enumerate(decoder.output_hypernetworks_mlps):
            logit = token_logits[k] if token_logits is not None else mask_logit
            _set_last_linear(mlp, logit / (upscale.out_channels * level))
        iou_head = decoder.iou_prediction_head
        sigmoid = getattr(iou_head, "sigmoid", False)
        _set_last_linear(iou_head, _logit(score) if sigmoid else score)
        if token_scores is not None:
            last = iou_head.layers[-1] if hasattr(iou_head, "layers") else iou_head
            last.bias.copy_(torch.tensor([_logit(v) if sigmoid else v for v in token_scores]))
        for name in ("conv_s0", "conv_s1"):
            conv = getattr(decoder, name, None)
            if conv is not None:
                conv.weight.zero_()
                conv.bias.zero_()
        if getattr(decoder, "pred_obj_scores", False):
            _set_last_linear(decoder.pred_obj_score_head, 10.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def make_plain_sam_checkpoint(path: Path, *, arch: str | None = None, jitter: float = 0.05, seed: int = _SEED) -> Path:
    """Write a seeded random-weight SAM / SAM2 state dict, not rigged: answers depend on image and prompt.

    Built like :func:`make_sam_checkpoint` (``arch`` defaults to the file name's, e.g. ``mobile_sam``).
    The prompt encoder and mask decoder parameters are then moved by ``jitter * randn`` so that fresh
    initialisations (zero biases, unit norms) do not make different prompts look alike.

    ``seed`` gives other random weights of the same architecture.

    Returns:
        The path written.
    """
    from ultralytics.models.sam import build as sam_build

    path = Path(path)
    name = f"{arch}.pt" if arch else path.name
    with torch.random.fork_rng(devices=[]), mock.patch.object(sam_build, "_load_checkpoint", lambda m, _c: m):
        torch.manual_seed(seed)
        model = sam_build.build_sam(name)
        decoder = getattr(model, "sam_mask_decoder", None) or model.mask_decoder
        prompts = getattr(model, "sam_prompt_encoder", None) or model.prompt_encoder
        with torch.no_grad():
            for p in [*decoder.parameters(), *prompts.parameters()]:
                p.add_(jitter * torch.randn_like(p))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# A SAM 3 small enough to run in about a second per image on a CPU, built from the same Ultralytics classes as
# the real one (pipeline.concepts.sam3_build): narrow ViT and text transformer, one or two layers elsewhere.
SAM3_TEST_DIMS = dict(
    vit_dim=64,
    vit_depth=4,
    vit_mlp_ratio=2.0,
    text_width=64,
    text_layers=2,
    ffn=128,
    encoder_layers=1,
    decoder_layers=2,
    geometry_layers=1,
    queries=16,
    d_model=32,
)


def make_sam3_checkpoint(path: Path, *, seed: int = _SEED, meta_layout: bool = True, **dims) -> Path:
    """Write a seeded random-weight reduced SAM 3 image model (``SAM3_TEST_DIMS``, overridden by ``dims``).

    Saved as a plain state dict: with ``meta_layout`` as Meta's ``sam3.pt`` lays it out (``{"model": ...}``,
    image-model keys under ``detector.``, the interactive head's under ``tracker.``: see
    :func:`_sam3_tracker_state`), else the image model's own keys. Parameters that Ultralytics leaves uninitialised (``torch.empty``: the text transformer's
    positional embedding and projection) get small random values.

    Returns:
        The path written.
    """
    from pipeline.concepts.sam3_build import Sam3Dims, build_sam3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam3(Sam3Dims(**{**SAM3_TEST_DIMS, **dims}))
        text = model.backbone.language_backbone.encoder
        with torch.no_grad():
            text.positional_embedding.normal_(0, 0.01)
            text.text_projection.normal_(0, text.width**-0.5)
    state = model.state_dict()
    if meta_layout:
        tracker = _sam3_tracker_state(Sam3Dims(**{**SAM3_TEST_DIMS, **dims}), seed=seed)
        state = {"model": {**{f"detector.{k}": v for k, v in state.items()}, **tracker}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _sam3_tracker_state(dims, *, seed: int, jitter: float = 0.05) -> dict[str, torch.Tensor]:
    """The ``tracker.*`` part of a reduced ``sam3.pt``: a seeded random interactive SAM 3 of size ``dims`` (its
    image encoder is the detector's vision backbone, so left out), named as Meta names it (the inverse of
    Ultralytics' ``_load_checkpoint(..., interactive=True)``: memory attention under ``tracker.transformer.encoder``,
    memory encoder under ``tracker.maskmem_backbone``). The prompt encoder and mask decoder are moved by
    ``jitter * randn`` (as :func:`make_plain_sam_checkpoint`), so answers vary with the prompt."""
    from pipeline.concepts.sam3_build import build_interactive_sam3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = build_interactive_sam3(dims)
        with torch.no_grad():
            for p in [*model.sam_mask_decoder.parameters(), *model.sam_prompt_encoder.parameters()]:
                p.add_(jitter * torch.randn_like(p))
    renames = {"memory_attention.": "transformer.encoder.", "memory_encoder.": "maskmem_backbone."}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("image_encoder."):
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        name = renames[prefix] + key.removeprefix(prefix) if prefix else key
        out[f"tracker.{name}"] = value
    return out
