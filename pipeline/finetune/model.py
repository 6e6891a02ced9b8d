"""The SAM model as training sees it: the SAM stage's own backend, with the prompt side given gradients.

Loading (:func:`pipeline.sam.build.load_sam`), preprocessing, encoding and decoding are the SAM
stage's :class:`pipeline.sam.torch_backend.TorchBackend`, so the embeddings trained on and the
masks validated are the ones a labeling run computes; this module only chooses what trains, keeps
the image side's hash for the embedding cache, and turns the backend's features into flat tensors
that can be stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import SamlabelError
from pipeline.finetune.options import TRAIN_PARTS
from pipeline.sam.build import load_sam, resolve_arch
from pipeline.sam.profiles import LOWRES, SAM_INPUT, ULTRALYTICS, Profile, is_hq, profile_of
from pipeline.sam.prompts import Prompts
from pipeline.sam.torch_backend import TorchBackend
from pipeline.threads import torch_threads

#: Bumped when what an embedding is made from changes (preprocessing, feature layout): old cache entries are not read.
FEATURES_VERSION = 2

#: Flat, storable features: ``image_embed`` and, for SAM2, ``high_res_0`` / ``high_res_1``.
Features = dict[str, torch.Tensor]


class TrainableSam:
    """A SAM / SAM2 model split into the frozen image side (encoded once, cached) and the prompt side (trained).

    Args:
        weights: a checkpoint file (already resolved).
        arch: its architecture, or None to take it from the file name.
        device: where the model runs (an Ultralytics device string; None: the first GPU if any, else the CPU).

    Attributes:
        backend: the SAM stage's ``TorchBackend`` around the model.
        profile: the architecture's pre- and postprocessing (MedSAM's for ``medsam``): the images are
            encoded, prompts scaled and masks upsampled as the SAM stage does for this architecture.
        model: the Ultralytics ``SAMModel`` / ``SAM2Model``.
        arch: the architecture name.
        sam2: whether it is SAM2 / SAM2.1.
        prompt_encoder, mask_decoder: the parts that fine-tuning can change.
        threshold: the model's mask logit threshold.
    """

    def __init__(
        self, weights: str | Path, arch: str | None = None, *, device: torch.device | str | None = "cpu"
    ) -> None:
        self.arch = resolve_arch(weights, arch)
        if is_hq(self.arch):
            raise SamlabelError(f"--sam-arch {self.arch}: fine-tuning HQ-SAM is not supported (its decoder is the "
                                "authors' segment_anything_hq, not Ultralytics'); fine-tune a SAM, SAM2 or MedSAM model")  # fmt: skip
        if profile_of(self.arch).input_size != SAM_INPUT:
            raise SamlabelError(f"--sam-arch {self.arch}: fine-tuning SAM 3 is not supported here (its input is "
                                f"{profile_of(self.arch).input_size} pixels); fine-tune a SAM, SAM2 or MedSAM model")  # fmt: skip
        with torch_threads():
            model = load_sam(weights, self.arch)
        self.backend = TorchBackend(model, arch=self.arch, device=None if device is None else str(device))
        if self.backend.dtype != torch.float32:  # a half-precision model cannot be trained stably
            self.backend.model.float()
        self.profile: Profile = self.backend.profile
        self.model = self.backend.model
        self.device: torch.device = self.backend.device
        self.sam2 = self.backend.sam2
        self.prompt_encoder = self.model.sam_prompt_encoder if self.sam2 else self.model.prompt_encoder
        self.mask_decoder = self.model.sam_mask_decoder if self.sam2 else self.model.mask_decoder
        self.threshold = self.backend.threshold

    # ------------------------------------------------------------------------------------ what trains

    def trainable(self, train: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of what ``train`` (``decoder`` or ``decoder+prompt``) changes, in a fixed order.

        SAM2's ``conv_s0`` / ``conv_s1`` sit in its mask decoder but act on the backbone features before
        they are cached, so they stay frozen with the image encoder.
        """
        if train not in TRAIN_PARTS:
            raise SamlabelError(f"--train {train}: expected one of {', '.join(TRAIN_PARTS)}")
        parts = [("mask_decoder", self.mask_decoder)]
        if train == "decoder+prompt":
            parts.append(("prompt_encoder", self.prompt_encoder))
        out = []
        for prefix, module in parts:
            for name, p in module.named_parameters():
                if not name.startswith(("conv_s0.", "conv_s1.")):
                    out.append((f"{prefix}.{name}", p))
        return out

    def set_trainable(self, train: str) -> list[nn.Parameter]:
        """Freeze everything but ``trainable(train)``; returns those parameters."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = [p for _, p in self.trainable(train)]
        for p in params:
            p.requires_grad_(True)
        return params

    def modules(self, train: str) -> Iterable[nn.Module]:
        """The modules that are put in training mode while training."""
        yield self.mask_decoder
        if train == "decoder+prompt":
            yield self.prompt_encoder

    def trained_state(self) -> dict[str, torch.Tensor]:
        """State of the prompt encoder and mask decoder (what a resume needs beyond the input weights)."""
        out = {f"mask_decoder.{k}": v for k, v in self.mask_decoder.state_dict().items()}
        out.update({f"prompt_encoder.{k}": v for k, v in self.prompt_encoder.state_dict().items()})
        return {k: v.detach().cpu().clone() for k, v in out.items()}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``trained_state``."""
        for prefix, module in (("mask_decoder", self.mask_decoder), ("prompt_encoder", self.prompt_encoder)):
            sub = {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's state dict on the CPU, keyed as the released checkpoints are."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def features_key(self) -> str:
        """A hash of everything the cached image features depend on: architecture, image-side weights, layout.

        The prompt encoder and mask decoder are not part of it (SAM2's ``conv_s0`` / ``conv_s1`` are), so a
        fine-tuned checkpoint reuses the embeddings of the weights it started from.
        """
        h = hashlib.sha256(f"{self.arch}:{FEATURES_VERSION}".encode())
        keep = ("image_encoder.",) + (("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.") if self.sam2 else ())
        for name, tensor in sorted(self.model.state_dict().items()):
            if name.startswith(keep) or name == "no_mem_embed":
                h.update(name.encode())
                h.update(str(tuple(tensor.shape)).encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # -------------------------------------------------------------------------------------- image side

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> the (1, 3, 1024, 1024) encoder input, exactly as the SAM stage makes it
        (the profile's preprocessing: Ultralytics' letterbox, or MedSAM's stretch and min-max)."""
        return self.backend.preprocess(rgb)

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> Features:
        """Decoder-ready features of one image, float32 on the CPU.

        Returns:
            ``{"image_embed": (1, 256, 64, 64)}``; SAM2 adds ``"high_res_0"`` (1, 32, 256, 256) and
            ``"high_res_1"`` (1, 64, 128, 128), the levels ``SAM2Predictor.get_im_features`` gives.
        """
        with torch_threads():
            feats = self.backend.encode(self.preprocess(rgb))
        if not self.sam2:
            return {"image_embed": feats.float().cpu()}
        out = {"image_embed": feats["image_embed"].float().cpu()}
        out.update({f"high_res_{i}": f.float().cpu() for i, f in enumerate(feats["high_res_feats"])})
        return out

    # ------------------------------------------------------------------------------------- prompt side

    def decode(
        self,
        features: Features,
        boxes: torch.Tensor,
        *,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-mask logits and predicted IoU for N prompts on one image, with gradients where trainable.

        Args:
            features: the image's ``encode`` output, on ``device``.
            boxes: float (N, 4) xyxy in encoder-input pixels (``profile.scale_boxes`` of image pixels).
            points: float (N, K, 2) clicks (x, y) in encoder-input pixels, or None.
            labels: int (N, K): 1 positive, 0 negative, -1 no click.
            mask_input: float (N, 1, 256, 256) previous low-res logits, or None.

        Returns:
            logits float (N, 256, 256) over the encoder input's frame, predicted IoU float (N,).
        """
        if self.sam2:
            levels = sorted(k for k in features if k.startswith("high_res_"))
            feats = {"image_embed": features["image_embed"], "high_res_feats": [features[k] for k in levels]}
        else:
            feats = features["image_embed"]
        prompts = Prompts(boxes=boxes, points=points, labels=None if labels is None else labels.int(), masks=mask_input)
        logits, iou = self.backend.decode(feats, prompts, multimask=False)
        return logits[:, 0], iou[:, 0]


def content_cells(hw: tuple[int, int], profile: Profile = ULTRALYTICS) -> tuple[int, int]:
    """(rows, cols) of the 256 x 256 low-res grid that the image (not the padding) covers."""
    new_h, new_w = profile.content_hw(hw)
    cell = SAM_INPUT // LOWRES
    return -(-new_h // cell), -(-new_w // cell)


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op elsewhere."""
    if device.type != "cuda":
        return torch.autocast(device_type="cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
