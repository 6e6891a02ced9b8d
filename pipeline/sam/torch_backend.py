"""SAM on PyTorch through Ultralytics' predictors: the reference every other backend is checked against.

This is the only module that reaches into Ultralytics' SAM predictor and model internals (predictor
setup, ``preprocess``, ``get_im_features``, ``_inference_features``, the SAM2 feature preparation).
Prompts arrive checked and in encoder-input pixels (:class:`pipeline.sam.prompts.Prompts`); masks
are not post-processed here (see :mod:`pipeline.sam.upsample`).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.sam.profiles import profile_of
from pipeline.sam.prompts import Prompts
from pipeline.threads import torch_threads

Features = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


def make_backend(model: torch.nn.Module, *, arch: str, device: str | None = None):
    """The PyTorch backend of ``arch``: :class:`TorchBackend`, or the ``HqBackend`` for HQ-SAM."""
    from pipeline.sam.profiles import is_hq

    if is_hq(arch):
        from pipeline.sam.hq_backend import HqBackend

        return HqBackend(model, arch=arch, device=device)
    return TorchBackend(model, arch=arch, device=device)


class TorchBackend:
    """Encode and decode with an Ultralytics ``Predictor`` (SAM-1 family), ``SAM2Predictor`` (SAM2 / 2.1) or
    ``SAM3Predictor`` (SAM 3's interactive head: SAM2's prompt path at 1008 pixels).

    The predictor is set up here, at construction, inside ``torch_threads()``: Ultralytics'
    ``select_device`` changes torch's global thread count, and the block puts it back.

    Attributes:
        name: ``"torch"``.
        arch: the architecture (one of :func:`pipeline.sam.build.sam_archs`).
        profile: how it is pre- and postprocessed (:func:`pipeline.sam.profiles.profile_of`).
        predictor: the Ultralytics predictor (model on ``device``, eval mode).
        device: where the model runs.
        dtype: float type of the model's inputs (float32, or float16 for a half-precision GPU model).
        sam2: whether the model takes SAM2's path (SAM2 / SAM2.1, and SAM 3's interactive head).
        threshold: the model's mask logit threshold.
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, arch: str, device: str | None = None) -> None:
        from ultralytics.models.sam import Predictor, SAM2Predictor, SAM3Predictor

        self.arch = arch
        self.profile = profile_of(arch)
        self.sam2 = arch.startswith(("sam2", "sam3"))  # SAM 3's interactive head is SAM 2's, on SAM 3's ViT
        predictor_cls = SAM3Predictor if arch == "sam3" else SAM2Predictor if self.sam2 else Predictor
        side = self.profile.input_size
        with torch_threads():
            predictor = predictor_cls(overrides=dict(device=device, imgsz=side, conf=0.0, verbose=False))
            predictor.setup_model(model, verbose=False)  # SAM3Predictor sets its mean and std (127.5) here
        predictor.imgsz = [side, side]  # what setup_source would set: the letterbox size
        self.predictor = predictor
        self.device: torch.device = predictor.device
        self.dtype: torch.dtype = predictor.torch_dtype
        self.threshold = float(getattr(predictor.model, "mask_threshold", 0.0))

    @property
    def model(self) -> torch.nn.Module:
        """The SAM / SAM2 model."""
        return self.predictor.model

    @property
    def image_encoder(self) -> torch.nn.Module:
        """The image encoder: (1, 3, S, S) normalized image -> embedding (SAM-1) or a dict (SAM2, SAM 3)."""
        return self.model.image_encoder

    def decoder_parts(self) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """``(prompt_encoder, mask_decoder)`` of a SAM-1 family model (what the ONNX decoders are built from)."""
        return None if self.sam2 else (self.model.prompt_encoder, self.model.mask_decoder)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> the (1, 3, S, S) encoder input on ``device`` (S: ``profile.input_size``).

        The letterbox profiles are Ultralytics' own preprocessing (letterbox, the predictor's mean / std); the others
        (MedSAM's) are the profile's.
        """
        if self.profile.resize != "letterbox":
            return torch.from_numpy(self.profile.preprocess(rgb)).to(self.device, self.dtype)
        p = self.predictor
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return p.preprocess([np.ascontiguousarray(rgb[..., ::-1])])
        # On the CPU: Ultralytics' letterbox, then its ``(im - mean) / std`` in numpy: the same float32 operations
        # (the same bits), in one thread and without PyTorch's thread pool for two passes over 3 M values.
        (boxed,) = p.pre_transform([np.ascontiguousarray(rgb[..., ::-1])])  # BGR in, as Ultralytics' preprocess
        chw = np.ascontiguousarray(boxed.transpose(2, 0, 1)[::-1])  # (3, S, S) RGB
        x = chw - p.mean.numpy()
        x /= p.std.numpy()
        return torch.from_numpy(x[None])

    def encode(self, image: torch.Tensor) -> Features:
        """Decoder-ready features of one encoder input (the image-encoder pass)."""
        return self.predictor.get_im_features(image)

    def features(self, encoded) -> Features:
        """Decoder-ready features from the raw output of ``image_encoder`` (for an encoder run elsewhere).

        SAM-1: the embedding itself. SAM2: what ``SAM2Model.forward_image`` and
        ``SAM2Predictor.get_im_features`` do after the encoder (high-resolution levels projected by the
        mask decoder's ``conv_s0`` / ``conv_s1``, ``no_mem_embed`` added, levels reshaped), so
        ``features(image_encoder(x))`` equals ``encode(x)``.
        """
        if not self.sam2:
            return encoded
        model = self.model
        out = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in encoded.items()}
        if model.use_high_res_features_in_sam:
            out["backbone_fpn"][0] = model.sam_mask_decoder.conv_s0(out["backbone_fpn"][0])
            out["backbone_fpn"][1] = model.sam_mask_decoder.conv_s1(out["backbone_fpn"][1])
        _, vision_feats, _, _ = model._prepare_backbone_features(out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        sizes = self.predictor._bb_feat_sizes
        feats = [feat.permute(1, 2, 0).view(1, -1, *size) for feat, size in zip(vision_feats, sizes, strict=True)]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def decode(self, features: Features, prompts: Prompts, *, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, K, 256, 256) and scores (N, K) of ``prompts``; K = 3 with ``multimask``, else 1.

        SAM-1 takes boxes and points as they are; SAM2 takes box corners as points before the other
        points (as ``SAM2Predictor`` prepares them). A SAM2 single-mask answer is its own choice
        between its single-mask token and the most stable of its three (``dynamic_multimask_via_stability``).
        """
        p = self.predictor
        if self.sam2:
            points, labels = prompts.as_points(box_first=True, pad=False)  # SAM's prompt encoder adds the padding
            logits, scores = p._inference_features(features, points, labels, prompts.masks, multimask)
        else:
            logits, scores = p._inference_features(
                features, prompts.boxes, prompts.points, prompts.labels, prompts.masks, multimask
            )
        n = prompts.n
        return logits.unflatten(0, (n, -1)), scores.unflatten(0, (n, -1))
