"""SAM's mask decoder for box prompts, rearranged so that the boxes of one image share work.

Ultralytics' ``MaskDecoder`` copies the image embedding once per box (``repeat_interleave``) and runs
the whole two-way transformer on each copy. For box prompts without a mask input the copies are
identical until the first image-to-token attention, so here:

* the image-side projections of the first layer (token-to-image keys and values, image-to-token
  queries) are computed once per image, not once per box;
* image-to-token attention, whose keys are the ~7 prompt tokens, is written with block-diagonal
  token matrices: one (HW x 128) @ (128 x heads*tokens) product for the logits and one
  (HW x heads*tokens) @ (heads*tokens x 256) product that already includes ``out_proj``, with no
  transposes of image-sized tensors;
* the output upscaling (two stride-2, kernel-2 transposed convolutions, a LayerNorm2d and GELUs)
  is per pixel, so it runs as two matrix products on the token grid with the 4 x 4 sub-pixels kept
  in the channel axis; the pixels are put in place once, on the final 256 x 256 logits;
* only the single-mask output that box prompts use (mask token 0) is computed.

The arithmetic is the same as the reference up to the order of floating-point sums (logits agree
to ~1e-5; ``tests/test_sam_box_decoder.py``). The module is what the ``onnx`` runtime exports; PyTorch's
own ``MaskDecoder`` stays the reference of the ``torch`` runtime.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BoxDecoder(nn.Module):
    """(image embedding (1, C, h, w), boxes (N, 4) in 1024-input pixels) -> (logits (N, 1, 4h, 4w), scores (N, 1)).

    Built from the ``prompt_encoder`` and ``mask_decoder`` of a SAM-1 family model (SAM ViT-B/L/H,
    MobileSAM); their weights are used as they are, not copied.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        transformer = mask_decoder.transformer
        self.layers = transformer.layers
        self.final_attn = transformer.final_attn_token_to_image
        self.norm_final = transformer.norm_final_attn
        up = mask_decoder.output_upscaling  # ConvT(C, C/4, 2, 2), LayerNorm2d, act, ConvT(C/4, C/8, 2, 2), act
        self.conv1, self.norm2d, self.act1, self.conv2, self.act2 = up[0], up[1], up[2], up[3], up[4]
        for conv in (self.conv1, self.conv2):
            if conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0):
                raise TypeError("BoxDecoder expects SAM's stride-2, kernel-2 output upscaling")

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe, md = self.prompt_encoder, self.mask_decoder
        sparse, _ = pe(points=None, boxes=boxes, masks=None)  # (N, 2, C) box-corner tokens
        queries, keys = self._transformer(embedding, sparse)
        h, w = embedding.shape[-2:]
        hyper = md.output_hypernetworks_mlps[0](queries[:, 1])  # (N, C/8): mask token 0, the single mask
        logits = self._upscaled_logits(keys, hyper, h, w)
        scores = md.iou_prediction_head(queries[:, 0])[:, :1]
        return logits.unsqueeze(1), scores

    def _transformer(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer on the prompt tokens ``sparse`` (N, T', C) without a mask input: (queries (N, T, C),
        keys (N, HW, C)), the image side shared by the N prompts until the first image-to-token attention."""
        pe, md = self.prompt_encoder, self.mask_decoder
        n, c = sparse.shape[0], sparse.shape[2]
        # The dense prompt without a mask is one learned vector added at every position.
        src = (embedding[0] + pe.no_mask_embed.weight.reshape(c, 1, 1)).flatten(1).T  # (HW, C), shared
        pos = pe.get_dense_pe()[0].flatten(1).T  # (HW, C), a constant
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)  # (N, T, C)

        queries, keys = tokens, src  # keys stay shared (HW, C) until the first image-to-token attention
        for layer in self.layers:
            queries, keys = self._layer(layer, queries, keys, tokens, pos)
        t2i = self.final_attn
        kp, vp = _linear(keys, t2i.k_proj, pos), _linear(keys, t2i.v_proj)
        queries = self.norm_final(queries + _token_to_image(t2i, queries + tokens, kp, vp))
        return queries, keys

    @staticmethod
    def _layer(layer, queries, keys, query_pe, key_pe):
        """One ``TwoWayAttentionBlock``; ``keys`` is (HW, C) when shared by every box, else (N, HW, C)."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        # The image side of both attentions reads the same keys: project them before the tokens change.
        kp, vp, qp = _linear(keys, t2i.k_proj, key_pe), _linear(keys, t2i.v_proj), _linear(keys, i2t.q_proj, key_pe)
        queries = layer.norm2(queries + _token_to_image(t2i, queries + query_pe, kp, vp))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _image_to_token(i2t, qp, queries + query_pe, queries))
        return queries, keys

    def _upscaled_logits(self, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``hyper @ output_upscaling(keys)`` as (N, 4h, 4w), computed per token with sub-pixels in the channels."""
        n = keys.shape[0]
        z = self._upscaled(keys)  # (N, HW*16, C2)
        m = (z @ hyper.unsqueeze(-1)).reshape(n, h, w, 2, 2, 2, 2)  # (N, i, j, a, b, c, d)
        return m.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 4 * h, 4 * w)  # rows 4i+2a+c, cols 4j+2b+d

    def _upscaled(self, keys: torch.Tensor) -> torch.Tensor:
        """``output_upscaling(keys)`` per token: (N, HW, C) -> (N, HW*16, C/8), rows (i, j, a, b, c, d): output
        pixel (4i+2a+c, 4j+2b+d)."""
        n = keys.shape[0]
        c1, c2 = self.conv1.out_channels, self.conv2.out_channels
        # ConvTranspose2d(k=2, s=2): output pixel (2i+a, 2j+b) = x[:, i, j] @ W[:, :, a, b] + bias.
        w1 = self.conv1.weight.permute(0, 2, 3, 1).flatten(1)  # (C, 2*2*C1), columns (a, b, o)
        b1 = self.conv1.bias.repeat(4)
        y = torch.addmm(b1, keys.flatten(0, 1), w1).reshape(-1, c1)  # (N*HW*4, C1), rows (n, i, j, a, b)
        u = y.mean(-1, keepdim=True)  # LayerNorm2d over the channels of each output pixel
        s = (y - u).pow(2).mean(-1, keepdim=True)
        y = self.act1((y - u) / torch.sqrt(s + self.norm2d.eps) * self.norm2d.weight + self.norm2d.bias)
        w2 = self.conv2.weight.permute(0, 2, 3, 1).flatten(1)  # (C1, 2*2*C2), columns (c, d, o)
        return self.act2(torch.addmm(self.conv2.bias.repeat(4), y, w2)).reshape(n, -1, c2)  # (N, HW*16, C2)


def _linear(x: torch.Tensor, lin: nn.Linear, pe: torch.Tensor | None = None) -> torch.Tensor:
    """``lin(x + pe)`` for image tokens (HW, C) or (N, HW, C), as one 2-D product.

    ``pe`` is constant, so ``pe @ W.T + b`` folds into one (HW, D) bias at export: the big tensor is
    read once and no (N, HW, C) sum is made.
    """
    bias = lin.bias if pe is None else pe @ lin.weight.T + lin.bias
    if x.dim() == 2:
        return torch.addmm(bias, x, lin.weight.T) if pe is not None else lin(x)
    y = (x.flatten(0, 1) @ lin.weight.T).reshape(x.shape[0], x.shape[1], -1)
    return y + bias


def _token_to_image(attn, q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
    """``Attention(q=tokens, k=image, v=image)`` given the projected image keys/values (shared or per box)."""
    heads = attn.num_heads
    qp = attn.q_proj(q)  # (N, T, D)
    n, t, d = qp.shape
    qh = qp.reshape(n, t, heads, d // heads).transpose(1, 2)  # (N, H, T, d)
    kh, vh = _split_heads(kp, heads), _split_heads(vp, heads)  # (H, HW, d) or (N, H, HW, d)
    a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)  # (N, H, T, HW)
    out = (a @ vh).transpose(1, 2).reshape(n, t, d)
    return attn.out_proj(out)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, D) -> (..., H, L, D/H) for 2-D or 3-D ``x``."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], heads, -1).permute(1, 0, 2)
    return x.reshape(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)


def _image_to_token(attn, qp: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Attention(q=image, k=tokens, v=tokens)`` given the projected image queries, with block-diagonal
    token matrices (see the module doc)."""
    heads = attn.num_heads
    kp, vp = attn.k_proj(k), attn.v_proj(v)  # (N, T, D)
    n, t, d = kp.shape
    # block[h, e] = 1 where channel e belongs to head h
    block = torch.repeat_interleave(torch.eye(heads, dtype=kp.dtype, device=kp.device), d // heads, dim=1)
    kb = (kp.unsqueeze(1) * block[None, :, None, :]).reshape(n, heads * t, d)  # (N, H*T, D), row (h, t)
    vb = (vp.unsqueeze(1) * block[None, :, None, :]).reshape(n, heads * t, d)
    logits = (qp @ kb.transpose(1, 2)) / math.sqrt(d // heads)  # (N, HW, H*T)
    a = torch.softmax(logits.unflatten(-1, (heads, t)), dim=-1).flatten(-2)
    return a @ (vb @ attn.out_proj.weight.T) + attn.out_proj.bias  # (N, HW, C)


def reference_box_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module):
    """Ultralytics' own path for the same inputs: (embedding, boxes) -> (logits (N, 1, 256, 256), scores (N, 1))."""

    def run(embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
        return mask_decoder(
            image_embeddings=embedding,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    return run


__all__ = ["BoxDecoder", "reference_box_decoder"]
