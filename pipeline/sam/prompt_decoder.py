"""SAM-1's prompt encoder + mask decoder for any prompt, in a form the ONNX exporter traces.

What segment-anything's ``SamOnnxModel`` does, for a batch of N prompts of P points each:

* points and box corners are one point set per prompt, SAM's labels telling them apart: 1 positive,
  0 negative, 2 / 3 the top-left / bottom-right box corner, -1 padding (SAM's not-a-point token; a
  prompt without a box ends with one, as SAM's prompt encoder adds);
* the label embeddings are added with masks (``label == k``) instead of boolean indexing, which
  traces to plain arithmetic with the same values;
* the mask input is always an input: ``has_mask_input`` (1,) picks the embedded mask (1) or SAM's
  no-mask embedding (0); ``0 * x + 1 * e`` is exactly ``e``;
* every mask token comes out, so one graph serves single-mask (token 0) and multimask (tokens 1-3)
  answers, as ``MaskDecoder.forward`` slices them.

The rest is Ultralytics' ``MaskDecoder.predict_masks`` with the same layers, written so the batch
size stays free in the graph (broadcasting where it repeats the image embedding per prompt, layer
norms with constant shapes). The box-only single-mask case has its own faster graph
(:mod:`pipeline.sam.box_decoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptDecoder(nn.Module):
    """(embedding (1, C, h, w), point_coords (N, P, 2), point_labels (N, P), mask_input (N, 1, 4h, 4w),
    has_mask_input (1,)) -> (logits (N, 4, 4h, 4w), scores (N, 4)) for every mask token.

    ``point_coords`` are in encoder-input pixels; ``point_labels`` are float. Built from the
    ``prompt_encoder`` and ``mask_decoder`` of a SAM-1 family model; their weights are used as
    they are, not copied.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        down, up = prompt_encoder.mask_downscaling, mask_decoder.output_upscaling
        # Conv, LayerNorm2d, act, Conv, LayerNorm2d, act, Conv  /  ConvT, LayerNorm2d, act, ConvT, act
        if len(down) != 7 or len(up) != 5:
            raise TypeError("PromptDecoder expects SAM's mask downscaling (7 layers) and output upscaling (5 layers)")

    def forward(
        self,
        embedding: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe, md = self.prompt_encoder, self.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)  # (N, P, C)
        dense = self._embed_masks(mask_input, has_mask_input)  # (N, C, h, w)
        # MaskDecoder.predict_masks, with broadcasting where it repeats the image per prompt
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = embedding + dense
        hs, src = md.transformer(src, pe.get_dense_pe(), tokens)
        n, c, h, w = dense.shape
        upscaled = _run(md.output_upscaling, src.transpose(1, 2).reshape(n, c, h, w))  # (N, C/8, 4h, 4w)
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
        logits = (hyper @ upscaled.flatten(2)).reshape(n, -1, upscaled.shape[2], upscaled.shape[3])
        return logits, md.iou_prediction_head(hs[:, 0])

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embed_points(self.prompt_encoder, coords, labels)

    def _embed_masks(self, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        has_mask = has_mask.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask * _run(pe.mask_downscaling, masks) + (1 - has_mask) * no_mask


def embed_points(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse tokens (N, P, C) of points and box corners (coords (N, P, 2) in encoder-input pixels, float labels
    (N, P)): ``PromptEncoder._embed_points`` without its padding step (the caller pads) or boolean indexing."""
    pe = prompt_encoder
    embedding = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)  # + 0.5: pixel centres
    labels = labels.unsqueeze(-1)
    embedding = embedding * (labels != -1) + pe.not_a_point_embed.weight * (labels == -1)
    for k, point_embedding in enumerate(pe.point_embeddings):
        embedding = embedding + point_embedding.weight * (labels == k)
    return embedding


def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``, with each ``LayerNorm2d`` given its channel count as a constant (the exporter cannot
    trace Ultralytics' ``x.shape[1:2]`` when the batch size is free)."""
    for layer in layers:
        if type(layer).__name__ == "LayerNorm2d":
            c = int(layer.weight.shape[0])
            x = F.layer_norm(x.permute(0, 2, 3, 1), (c,), layer.weight, layer.bias, layer.eps).permute(0, 3, 1, 2)
        else:
            x = layer(x)
    return x


def reference_prompt_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module):
    """Ultralytics' own path: (embedding, points (N, P, 2), labels (N, P), boxes (N, 4) | None, masks | None)
    -> (logits (N, 4, 256, 256), scores (N, 4)) of every mask token, as :class:`PromptDecoder` answers.

    ``MaskDecoder.forward`` slices token 0 (single mask) or tokens 1-3 (multimask) out of these.
    """

    def run(embedding, points, labels, boxes=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = prompt_encoder(points=(points, labels), boxes=boxes, masks=masks)
        return mask_decoder.predict_masks(
            image_embeddings=embedding,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )

    return run


__all__ = ["PromptDecoder", "embed_points", "reference_prompt_decoder"]
