"""SAM 3's image model (Ultralytics' classes), its size read from a checkpoint, and its tokenizer.

Ultralytics' ``build_sam3_image_model`` fixes every size and reads the checkpoint with a full unpickle; it also
needs ``import clip`` for the tokenizer (Ultralytics' CLIP fork, installed from git). ``build_sam3`` assembles
the same modules from ``Sam3Dims`` (its defaults are Meta's released SAM 3, which ``tests/test_concepts_sam3.py``
checks against Ultralytics' builder) and takes the tokenizer as an argument; ``load_sam3`` reads the weights with
``weights_only=True`` and builds the architecture the tensors' shapes describe, so a reduced SAM 3 (the tests')
runs the same code as the real one.

``build_interactive_sam3`` / ``load_interactive_sam3`` do the same for SAM 3's interactive head (``SAM3Model``: box
and point prompts, what ``--segmenter sam3.pt`` runs), in place of Ultralytics' ``build_interactive_sam3``, which
unpickles the file in full.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import SamlabelError, WeightsNotFoundError

LOG = logging.getLogger(__name__)

HEAD_DIM = 64  # channels per attention head of SAM 3's ViT and text transformer (1024 / 16)
IMGSZ = 1008  # SAM 3's input side (72 x 72 patches of 14 pixels)
GET_WEIGHTS = (
    "accept Meta's SAM 3 licence at huggingface.co/facebook/sam3, download sam3.pt and pass its path "
    "({flag} PATH/sam3.pt)"
)


@dataclass(frozen=True)
class Sam3Dims:
    """The sizes of a SAM 3 image model; the defaults are Meta's released SAM 3 (848M parameters).

    Attributes:
        vit_dim, vit_depth, vit_mlp_ratio: the image ViT's width, blocks and MLP width / ``vit_dim``; its heads are
            ``vit_dim // 64`` and the last block of each quarter of the depth attends globally (7, 15, 23, 31).
        text_width, text_layers: the text transformer's width and layers (heads ``text_width // 64``).
        ffn: hidden width of the fusion encoder's, decoder's and geometry encoder's MLPs and of the scoring MLP.
        encoder_layers, decoder_layers, geometry_layers: layers of the fusion encoder, decoder, geometry encoder.
        queries: object queries of the decoder (the most instances per phrase).
        d_model: width of everything after the backbones (necks, fusion, decoder, heads), with one attention head per 32 channels (8 at 256).
    """

    vit_dim: int = 1024
    vit_depth: int = 32
    vit_mlp_ratio: float = 4.625
    text_width: int = 1024
    text_layers: int = 24
    ffn: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    geometry_layers: int = 3
    queries: int = 200
    d_model: int = 256

    @property
    def global_blocks(self) -> tuple[int, ...]:
        step = max(1, self.vit_depth // 4)
        return tuple(i for i in range(self.vit_depth) if (i + 1) % step == 0)


def clip_tokenizer() -> Callable:
    """SAM 3's BPE tokenizer: ``tok(texts, context_length=32)`` -> LongTensor (len(texts), 32).

    Ultralytics' CLIP fork (``import clip``) where a user has installed it, as Ultralytics itself uses; otherwise
    ``open_clip``'s ``SimpleTokenizer`` (PyPI ``open_clip_torch``), which ships the same vocabulary and is called
    the same way. Nothing is installed and no ``clip`` module is faked.
    """
    try:
        import clip

        tokenizer = clip.simple_tokenizer.SimpleTokenizer()
        if callable(tokenizer):
            return tokenizer
    except Exception:  # noqa: BLE001, S110 - PyPI's openai-clip fails to import (pkg_resources) or is not callable
        pass
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        raise SamlabelError(
            "SAM 3 needs the CLIP tokenizer: pip install 'samlabel[sam3]' (or pip install open_clip_torch)"
        ) from None
    return SimpleTokenizer()


def build_sam3(dims: Sam3Dims = Sam3Dims(), *, tokenizer: Callable | None = None) -> nn.Module:
    """An untrained SAM 3 image model (``SAM3SemanticModel``) of size ``dims``, built from Ultralytics' classes
    as ``ultralytics.models.sam.build_sam3.build_sam3_image_model`` builds it, in eval mode, on the CPU.

    Args:
        dims: the sizes (default: Meta's SAM 3).
        tokenizer: the text tokenizer (default: ``clip_tokenizer()``).
    """
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine
    from ultralytics.models.sam.sam3.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from ultralytics.models.sam.sam3.model_misc import DotProductScoring
    from ultralytics.models.sam.sam3.sam3_image import SAM3SemanticModel
    from ultralytics.models.sam.sam3.text_encoder_ve import VETextEncoder
    from ultralytics.models.sam.sam3.vl_combiner import SAM3VLBackbone
    from ultralytics.nn.modules.transformer import MLP

    vision = _vision_backbone(dims)
    text = VETextEncoder(
        tokenizer=tokenizer if tokenizer is not None else clip_tokenizer(),
        d_model=dims.d_model,
        width=dims.text_width,
        heads=max(1, dims.text_width // HEAD_DIM),
        layers=dims.text_layers,
    )
    scoring = DotProductScoring(
        d_model=dims.d_model,
        d_proj=dims.d_model,
        prompt_mlp=MLP(
            dims.d_model, dims.ffn, dims.d_model, num_layers=2, residual=True, out_norm=nn.LayerNorm(dims.d_model)
        ),
    )
    segmentation = UniversalSegmentationHead(
        hidden_dim=dims.d_model,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=_attention(dims.d_model, batch_first=False, dropout=0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=dims.d_model),
    )
    model = SAM3SemanticModel(
        backbone=SAM3VLBackbone(visual=vision, text=text, scalp=1),
        transformer=_transformer(dims),
        input_geometry_encoder=_geometry_encoder(dims, PositionEmbeddingSine),
        segmentation_head=segmentation,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring,
        use_instance_query=False,
        multimask_output=True,
    )
    return model.eval()


def _vision_backbone(dims: Sam3Dims) -> Any:  # Ultralytics' Sam3DualViTDetNeck
    """SAM 3's ViT and its two necks (SAM 3's and the SAM 2-style one of the interactive head), as Ultralytics'
    ``_create_vision_backbone`` builds them at Meta's sizes."""
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine
    from ultralytics.models.sam.sam3.necks import Sam3DualViTDetNeck
    from ultralytics.models.sam.sam3.vitdet import ViT

    vit = ViT(
        img_size=IMGSZ,
        pretrain_img_size=336,
        patch_size=14,
        embed_dim=dims.vit_dim,
        depth=dims.vit_depth,
        num_heads=max(1, dims.vit_dim // HEAD_DIM),
        mlp_ratio=dims.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=dims.global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=24,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    vision = Sam3DualViTDetNeck(
        position_encoding=_position_encoding(PositionEmbeddingSine, dims.d_model),
        d_model=dims.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=True,
    )
    return vision


def _position_encoding(cls, d_model: int) -> nn.Module:
    return cls(num_pos_feats=d_model, normalize=True, scale=None, temperature=10000)


def _heads(d_model: int) -> int:
    """Attention heads at width ``d_model``: SAM 3's 8 at 256 (32 channels each)."""
    return max(1, d_model // 32)


class WeightlessAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` that never returns its attention weights (``need_weights=False``).

    SAM 3's callers use only the output (``attn(...)[0]``), but the fusion encoder asks for the weights by default,
    so PyTorch builds each (heads, 5184, 5184) map in full and averages it over heads: about 1 GB per phrase at
    1008 pixels, and most of the per-phrase time on a CPU. Without the weights PyTorch takes its fused
    scaled-dot-product path: the same outputs (up to float rounding), the same parameters and state-dict keys.
    """

    def forward(self, query, key, value, *args, **kwargs):
        kwargs["need_weights"] = False
        return super().forward(query, key, value, *args, **kwargs)


def _attention(d_model: int, *, batch_first: bool = True, dropout: float = 0.1) -> nn.MultiheadAttention:
    return WeightlessAttention(num_heads=_heads(d_model), dropout=dropout, embed_dim=d_model, batch_first=batch_first)


def _transformer(dims: Sam3Dims) -> nn.Module:
    from ultralytics.models.sam.sam3.decoder import TransformerDecoder, TransformerDecoderLayer
    from ultralytics.models.sam.sam3.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from ultralytics.models.sam.sam3.model_misc import TransformerWrapper

    encoder = TransformerEncoderFusion(
        layer=TransformerEncoderLayer(
            d_model=dims.d_model,
            dim_feedforward=dims.ffn,
            dropout=0.1,
            pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False,
            pos_enc_at_cross_attn_queries=False,
            pre_norm=True,
            self_attention=_attention(dims.d_model),
            cross_attention=_attention(dims.d_model),
        ),
        num_layers=dims.encoder_layers,
        d_model=dims.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            d_model=dims.d_model,
            dim_feedforward=dims.ffn,
            dropout=0.1,
            cross_attention=_attention(dims.d_model, batch_first=False),
            n_heads=_heads(dims.d_model),
            use_text_cross_attention=True,
        ),
        num_layers=dims.decoder_layers,
        num_queries=dims.queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=dims.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        use_act_checkpoint=True,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=dims.d_model)


def _geometry_encoder(dims: Sam3Dims, position_encoding) -> nn.Module:
    from ultralytics.models.sam.sam3.encoder import TransformerEncoderLayer
    from ultralytics.models.sam.sam3.geometry_encoders import SequenceGeometryEncoder

    return SequenceGeometryEncoder(
        pos_enc=_position_encoding(position_encoding, dims.d_model),
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=dims.d_model,
        num_layers=dims.geometry_layers,
        layer=TransformerEncoderLayer(
            d_model=dims.d_model,
            dim_feedforward=dims.ffn,
            dropout=0.1,
            pos_enc_at_attn=False,
            pre_norm=True,
            pos_enc_at_cross_attn_queries=False,
            pos_enc_at_cross_attn_keys=True,
            # what TransformerEncoderLayer makes when given none, at this width
            self_attention=_attention(dims.d_model, batch_first=False),
            cross_attention=_attention(dims.d_model, batch_first=False),
        ),
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def load_sam3(path: str | Path, *, flag: str = "--detector", tokenizer: Callable | None = None) -> nn.Module:
    """SAM 3's image model with the weights in ``path`` (Meta's ``sam3.pt`` or a plain state dict), eval mode, CPU.

    The file is read with ``weights_only=True`` (tensors and plain containers; never a full unpickle) and never
    downloaded. The detector part of Meta's checkpoint (``detector.*`` keys; SAM 3.1's names mapped as
    Ultralytics maps them) is taken; the tracker part is not needed here. The architecture's sizes are those the
    tensors have (``dims_of``).

    Raises:
        WeightsNotFoundError: no file at ``path`` (the message says where to get SAM 3's weights).
        SamlabelError: the file is not SAM 3 weights, holds Python objects, or does not fit SAM 3.
    """
    from pipeline.sam.checkpoint import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{flag} {path}: no such file; SAM 3's weights are not downloaded: {GET_WEIGHTS.format(flag=flag)}"
        )
    state = detector_state(read_state_dict(path, flag=flag))
    dims = dims_of(state, where=f"{flag} {path}")
    model = build_sam3(dims, tokenizer=tokenizer)
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise SamlabelError(f"{flag} {path}: does not fit SAM 3 ({first})") from None
    if missing:
        LOG.warning("%s %s: %d SAM 3 weights missing (first: %s); they keep their random values",
                    flag, path, len(missing), missing[0])  # fmt: skip
    return model


def detector_state(state: Mapping[str, object]) -> dict[str, object]:
    """The image model's part of a SAM 3 checkpoint, under ``SAM3SemanticModel``'s key names.

    Meta's ``sam3.pt`` holds ``detector.*`` (the image model) and ``tracker.*`` keys; a plain state dict of a
    ``SAM3SemanticModel`` (the tests') has no prefix and is taken as it is.
    """
    renamed = {
        k.replace("tracker.model.interactive_", "tracker.")
        .replace("tracker.model.interactivity_", "tracker.")
        .replace("interactive_convs", "sam2_convs"): v
        for k, v in state.items()
    }
    detector = {k.removeprefix("detector."): v for k, v in renamed.items() if k.startswith("detector.")}
    return detector or dict(state)


_DIM_KEYS = {
    "vit_dim": ("backbone.vision_backbone.trunk.patch_embed.proj.weight", 0),
    "vit_mlp": ("backbone.vision_backbone.trunk.blocks.0.mlp.fc1.weight", 0),
    "text_width": ("backbone.language_backbone.resizer.weight", 1),
    "ffn": ("transformer.encoder.layers.0.linear1.weight", 0),
    "queries": ("transformer.decoder.query_embed.weight", 0),
    "d_model": ("backbone.language_backbone.resizer.weight", 0),
}
_COUNTED = {
    "vit_depth": "backbone.vision_backbone.trunk.blocks",
    "text_layers": "backbone.language_backbone.encoder.transformer.resblocks",
    "encoder_layers": "transformer.encoder.layers",
    "decoder_layers": "transformer.decoder.layers",
    "geometry_layers": "geometry_encoder.encode",
}


def dims_of(state: Mapping[str, object], *, where: str) -> Sam3Dims:
    """The ``Sam3Dims`` that ``state`` (a ``SAM3SemanticModel`` state dict) was made with: widths from tensor
    shapes, depths from counted layers (heads and global-attention blocks follow SAM 3's rules, ``Sam3Dims``)."""
    sizes = {}
    for name, (key, axis) in _DIM_KEYS.items():
        shape = tuple(getattr(state.get(key), "shape", ()))
        if len(shape) <= axis:
            found = ", ".join(repr(k) for k in list(state)[:3])
            raise SamlabelError(f"{where}: not SAM 3 weights (no tensor {key!r}; its keys begin {found} ...)")
        sizes[name] = int(shape[axis])
    counts = {}
    for name, prefix in _COUNTED.items():
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        layers = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not layers:
            raise SamlabelError(f"{where}: not SAM 3 weights (no {prefix}.0 layer)")
        counts[name] = max(layers) + 1
    return dataclasses.replace(
        Sam3Dims(),
        vit_dim=sizes["vit_dim"],
        vit_mlp_ratio=sizes["vit_mlp"] / sizes["vit_dim"],
        text_width=sizes["text_width"],
        ffn=sizes["ffn"],
        queries=sizes["queries"],
        d_model=sizes["d_model"],
        **counts,
    )


# --- SAM 3's interactive head: box / point prompts, as Ultralytics' ``SAM("sam3.pt")`` runs them ---------------------

#: Parts of the interactive model an image prediction runs (the memory parts serve video tracking only).
INTERACTIVE_PARTS = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")


def build_interactive_sam3(dims: Sam3Dims = Sam3Dims()) -> nn.Module:
    """An untrained interactive SAM 3 (``SAM3Model``: SAM 3's ViT with the SAM 2-style neck, prompt encoder and
    mask decoder, and the video memory) of size ``dims``, as Ultralytics' ``build_interactive_sam3`` builds it at
    Meta's sizes (width ``dims.d_model`` after the ViT instead of 256), without reading a file; eval mode, CPU."""
    from ultralytics.models.sam.modules.blocks import RoPEAttention
    from ultralytics.models.sam.modules.encoders import MemoryEncoder
    from ultralytics.models.sam.modules.memory_attention import MemoryAttention, MemoryAttentionLayer
    from ultralytics.models.sam.modules.sam import SAM3Model
    from ultralytics.models.sam.sam3.vl_combiner import SAM3VLBackbone

    d, side = dims.d_model, IMGSZ // 14
    memory_attention = MemoryAttention(
        batch_first=True,
        d_model=d,
        pos_enc_at_input=True,
        layer=MemoryAttentionLayer(
            dim_feedforward=2048,
            dropout=0.1,
            pos_enc_at_attn=False,
            pos_enc_at_cross_attn_keys=True,
            pos_enc_at_cross_attn_queries=False,
            self_attn=RoPEAttention(
                embedding_dim=d, num_heads=1, downsample_rate=1, rope_theta=10000.0, feat_sizes=(side, side)
            ),
            d_model=d,
            cross_attn=RoPEAttention(
                embedding_dim=d,
                num_heads=1,
                downsample_rate=1,
                kv_in_dim=64,
                rope_theta=10000.0,
                feat_sizes=(side, side),
                rope_k_repeat=True,
            ),
        ),
        num_layers=4,
    )
    model = SAM3Model(
        image_size=IMGSZ,
        image_encoder=SAM3VLBackbone(scalp=1, visual=_vision_backbone(dims), text=None),
        memory_attention=memory_attention,
        memory_encoder=MemoryEncoder(out_dim=64, interpol_size=(1152, 1152)),
        backbone_stride=14,
        num_maskmem=7,
        sigmoid_scale_for_mem_enc=20.0,
        sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True,
        directly_add_no_mem_embed=True,
        use_high_res_features_in_sam=True,
        multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True,
        multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True,
        compile_image_encoder=False,
        no_obj_embed_spatial=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
    )
    return model.eval()


def interactive_state(state: Mapping[str, object]) -> dict[str, object]:
    """A SAM 3 checkpoint's tensors under ``SAM3Model``'s key names, mapped as Ultralytics'
    ``_load_checkpoint(..., interactive=True)`` maps them: the image model's vision backbone
    (``detector.backbone.vision_backbone.*``) becomes ``image_encoder.vision_backbone.*``, the tracker's
    ``transformer.encoder`` / ``maskmem_backbone`` the memory attention / encoder, every other ``tracker.*`` key its
    own name (SAM 3.1's names first mapped onto SAM 3's). A state dict already in ``SAM3Model``'s names (no
    ``detector.`` / ``tracker.`` key) is taken as it is."""
    ckpt = {
        k.replace("tracker.model.interactive_", "tracker.")
        .replace("tracker.model.interactivity_", "tracker.")
        .replace("interactive_convs", "sam2_convs"): v
        for k, v in state.items()
    }
    if not any(k.startswith(("detector.", "tracker.")) for k in ckpt):
        return ckpt
    out: dict[str, object] = {}
    detector = {k.replace("detector.", ""): v for k, v in ckpt.items() if "detector" in k}
    out.update({k.replace("backbone.vision_backbone", "image_encoder.vision_backbone"): v
                for k, v in detector.items() if "backbone.vision_backbone" in k})  # fmt: skip
    out.update({k.replace("tracker.transformer.encoder", "memory_attention"): v
                for k, v in ckpt.items() if "tracker.transformer" in k})  # fmt: skip
    out.update({k.replace("tracker.maskmem_backbone", "memory_encoder"): v
                for k, v in ckpt.items() if "tracker.maskmem_backbone" in k})  # fmt: skip
    out.update({k.replace("tracker.", ""): v for k, v in ckpt.items() if "tracker." in k})
    return out


def interactive_dims_of(state: Mapping[str, object], *, where: str) -> Sam3Dims:
    """The ``Sam3Dims`` of an interactive SAM 3 state dict (``interactive_state``'s names): the ViT's width, MLP and
    depth from its tensors, the width after it from the SAM 2-style neck (the text and detector sizes stay Meta's:
    the interactive model has none of them)."""
    trunk = "image_encoder.vision_backbone.trunk"
    shapes = {}
    for name, key in (("vit", f"{trunk}.patch_embed.proj.weight"), ("mlp", f"{trunk}.blocks.0.mlp.fc1.weight"),
                      ("neck", "image_encoder.vision_backbone.sam2_convs.2.conv_1x1.weight")):  # fmt: skip
        shape = tuple(getattr(state.get(key), "shape", ()))
        if not shape:
            raise SamlabelError(f"{where}: not SAM 3's interactive weights (no tensor {key!r})")
        shapes[name] = int(shape[0])
    pattern = re.compile(re.escape(trunk) + r"\.blocks\.(\d+)\.")
    depth = max(int(m.group(1)) for k in state if (m := pattern.match(k))) + 1
    return dataclasses.replace(
        Sam3Dims(),
        vit_dim=shapes["vit"],
        vit_mlp_ratio=shapes["mlp"] / shapes["vit"],
        vit_depth=depth,
        d_model=shapes["neck"],
    )


def load_interactive_sam3(path: str | Path, *, flag: str = "--segmenter") -> nn.Module:
    """SAM 3's interactive model (box and point prompts) with the weights in ``path`` (Meta's ``sam3.pt``), eval, CPU.

    Read with ``weights_only=True`` and never downloaded (Ultralytics' ``build_interactive_sam3`` unpickles the
    file in full); the keys are mapped as Ultralytics maps them (``interactive_state``) and the architecture has the
    sizes the tensors have. Every weight an image prediction uses (``INTERACTIVE_PARTS``) must be there with its
    shape; the video memory's may be missing.

    Raises:
        WeightsNotFoundError: no file at ``path``.
        SamlabelError: the file holds Python objects, is not SAM 3 weights, lacks the interactive head (the tracker
            part of ``sam3.pt``), or does not fit.
    """
    from pipeline.sam.checkpoint import mismatches, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{flag} {path}: no such file; SAM 3's weights are not downloaded: {GET_WEIGHTS.format(flag=flag)}"
        )
    where = f"{flag} {path}"
    state = interactive_state(read_state_dict(path, flag=flag))
    model = build_interactive_sam3(interactive_dims_of(state, where=where))
    expected = model.state_dict()
    used = {k: t for k, t in expected.items() if k.startswith(INTERACTIVE_PARTS)}
    problems = [p for p in mismatches(state, used, arch="sam3") if not p.startswith("unexpected")]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SamlabelError(
            f"{where}: not SAM 3's interactive (box prompt) weights: {problems[0]}{more}; Meta's sam3.pt holds them "
            "(its tracker part)"
        )
    fits = {k: v for k, v in state.items() if k in expected and getattr(v, "shape", None) == expected[k].shape}
    model.load_state_dict(fits, strict=False)  # the video memory's weights, where missing, stay random (unused)
    return model.eval()
