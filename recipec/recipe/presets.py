"""The shipped key-mapping presets (``source.preset``): one record per mapping, torch-free data.

A preset is the ``rename``/``exclude``/``adapt`` rules a recipe would otherwise write by hand
to load one family's checkpoints into another's models (Hugging Face ViT into timm ``vit_*``,
...). Its rules run before the recipe's own: renames first, then the recipe's renames on the
renamed keys; its excludes beside the recipe's; its fuse/split rules, then the recipe's; the
recipe's shape rules before its own (the first match wins). A preset rule that matches nothing
is no error (a preset covers several layouts of its family), but a preset that renames no key
at all is. The recipe language validates the name; :func:`recipec.weights.transfer.apply_transfer`
applies the rules; ``recipec presets`` lists them. Each preset is tested on a random-init pair
of models: the mapped model's output equals the source model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["PRESETS", "PRESET_NAMES", "Preset", "PresetName"]

# what source.preset may name; `recipec presets` and the JSON schema list them in this order
PresetName = Literal["hf_vit_to_timm", "hf_dinov2_to_timm", "hf_clip_vision_to_timm", "hf_convnext_to_timm",
                     "hf_vit_to_torchvision", "timm_resnet_to_torchvision", "torchvision_resnet_to_timm"]
PRESET_NAMES: tuple[str, ...] = get_args(PresetName)


@dataclass(frozen=True)
class Preset:
    """A shipped mapping from one family's checkpoint keys to another's model keys.

    Attributes:
        source: the checkpoints it reads (``from`` in ``recipec presets``).
        target: the models it loads into (``to``).
        description: what it does, and what the models must agree on for equal outputs.
        rename: ordered ``(pattern, replacement)`` pairs, as ``source.rename``.
        exclude: regexes on the renamed key, as ``source.exclude``.
        adapt: rules of ``source.adapt`` (``match``/``rule``, ``fuse``/``into``, ``split``/``into``).
    """

    source: str
    target: str
    description: str
    rename: tuple[tuple[str, str], ...] = ()
    exclude: tuple[str, ...] = ()
    adapt: tuple[dict[str, Any], ...] = ()


# q, k and v of HF attention, as separate names a fuse rule can find (the hub layout, then transformers 5's own)
_HF_QKV = ((r"\.attention\.attention\.query\.", ".attn.q."), (r"\.attention\.attention\.key\.", ".attn.k."),
           (r"\.attention\.attention\.value\.", ".attn.v."), (r"\.attention\.([qkv])_proj\.", r".attn.\1."))
_FUSE_QKV = {"fuse": [r"(.*)\.attn\.q\.(weight|bias)", r"\1.attn.k.\2", r"\1.attn.v.\2"], "into": r"\1.attn.qkv.\2",
             "dim": 0}

PRESETS: dict[str, Preset] = {
    "hf_vit_to_timm": Preset(
        source="Hugging Face ViT, DeiT (ViTModel, ViTForImageClassification, DeiT*)",
        target="timm vit_*, deit_* (deit_*_distilled_* for distilled DeiT)",
        description="q, k, v fused into attn.qkv; the classifier becomes head (cls_classifier/distillation_classifier: "
                    "head/head_dist); the pooler is dropped. HF ViT's layer norms use eps 1e-12, timm's 1e-6: "
                    "equal outputs need the same eps (a difference far below training noise for trained weights).",
        rename=((r"^(vit|deit)\.", ""),
                (r"^embeddings\.cls_token$", "cls_token"),
                (r"^embeddings\.distillation_token$", "dist_token"),
                (r"^embeddings\.position_embeddings$", "pos_embed"),
                (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
                (r"^(encoder\.layer|layers)\.(\d+)\.", r"blocks.\2."),
                (r"\.layernorm_before\.", ".norm1."),
                (r"\.layernorm_after\.", ".norm2."),
                *_HF_QKV,
                (r"\.attention\.(output\.dense|o_proj)\.", ".attn.proj."),
                (r"\.intermediate\.dense\.", ".mlp.fc1."),
                (r"\.output\.dense\.", ".mlp.fc2."),
                (r"^layernorm\.", "norm."),
                (r"^(classifier|cls_classifier)\.", "head."),
                (r"^distillation_classifier\.", "head_dist.")),
        exclude=(r"^pooler\.",),
        adapt=(_FUSE_QKV,)),
    "hf_dinov2_to_timm": Preset(
        source="Hugging Face DINOv2 (Dinov2Model; not the SwiGLU giant, not Dinov2WithRegisters)",
        target="timm vit_*_dinov2 (vit_small_patch14_dinov2, vit_base_patch14_dinov2, vit_large_patch14_dinov2)",
        description="q, k, v fused into attn.qkv; layer_scale1/2 become ls1/ls2; the mask token is dropped. "
                    "Same layer-norm eps (1e-6) on both sides; img_size decides the position-embedding grid.",
        rename=((r"^dinov2\.", ""),
                (r"^embeddings\.cls_token$", "cls_token"),
                (r"^embeddings\.position_embeddings$", "pos_embed"),
                (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
                (r"^(encoder\.layer|layers)\.(\d+)\.", r"blocks.\2."),
                *_HF_QKV,
                (r"\.attention\.(output\.dense|o_proj)\.", ".attn.proj."),
                (r"\.layer_scale([12])\.lambda1$", r".ls\1.gamma"),
                (r"^layernorm\.", "norm.")),
        exclude=(r"^embeddings\.mask_token$",),
        adapt=(_FUSE_QKV,)),
    "hf_clip_vision_to_timm": Preset(
        source="Hugging Face CLIP vision tower (CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection)",
        target="timm vit_*_clip_* (vit_base_patch32_clip_224, vit_base_patch16_clip_quickgelu_224, ...)",
        description="q, k, v fused into attn.qkv; pre_layrnorm becomes norm_pre, post_layernorm norm; the class and "
                    "position embeddings reshaped to timm's [1, n, dim]; the text tower and both projections dropped. "
                    "OpenAI weights use quick_gelu: pick timm's *_quickgelu_* model (or hidden_act gelu on the HF side).",
        rename=((r"^vision_model\.", ""),
                (r"^embeddings\.class_embedding$", "cls_token"),
                (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
                (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
                (r"^pre_layrnorm\.", "norm_pre."),
                (r"^encoder\.layers\.(\d+)\.", r"blocks.\1."),
                (r"\.layer_norm([12])\.", r".norm\1."),
                (r"\.self_attn\.([qkv])_proj\.", r".attn.\1."),
                (r"\.self_attn\.out_proj\.", ".attn.proj."),
                (r"^post_layernorm\.", "norm.")),
        exclude=(r"^text_model\.", r"^(text|visual)_projection\.", r"^logit_scale$", r"^embeddings\.position_ids$"),
        adapt=(_FUSE_QKV, {"match": r"^(cls_token|pos_embed)$", "rule": "reshape"})),
    "hf_convnext_to_timm": Preset(
        source="Hugging Face ConvNeXt (ConvNextModel, ConvNextForImageClassification)",
        target="timm convnext_* (any conv_mlp: the Linear pointwise layers are reshaped to 1x1 convs where needed)",
        description="stem, stages, blocks and head renamed; pwconv1/2 become mlp.fc1/2, reshaped [out, in] -> "
                    "[out, in, 1, 1] for conv_mlp models (convnext_atto ... nano); layer_scale_parameter becomes "
                    "gamma. HF's final layer norm uses eps 1e-12 (layer_norm_eps), timm's 1e-6.",
        rename=((r"^convnext\.", ""),
                (r"^embeddings\.patch_embeddings\.", "stem.0."),
                (r"^embeddings\.layernorm\.", "stem.1."),
                (r"^encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages.\1.downsample."),
                (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.blocks.\2."),
                (r"\.dwconv\.", ".conv_dw."),
                (r"\.layernorm\.", ".norm."),
                (r"\.pwconv([12])\.", r".mlp.fc\1."),
                (r"\.layer_scale_parameter$", ".gamma"),
                (r"^layernorm\.", "head.norm."),
                (r"^classifier\.", "head.fc.")),
        adapt=({"match": r"\.mlp\.fc[12]\.weight$", "rule": "reshape"},)),
    "hf_vit_to_torchvision": Preset(
        source="Hugging Face ViT, DeiT (ViTModel, ViTForImageClassification; not distilled)",
        target="torchvision vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14",
        description="q, k, v fused into self_attention.in_proj_weight/in_proj_bias; the classifier becomes "
                    "heads.head; the pooler is dropped. HF ViT's layer norms use eps 1e-12, torchvision's 1e-6.",
        rename=((r"^(vit|deit)\.", ""),
                (r"^embeddings\.cls_token$", "class_token"),
                (r"^embeddings\.position_embeddings$", "encoder.pos_embedding"),
                (r"^embeddings\.patch_embeddings\.projection\.", "conv_proj."),
                (r"^(encoder\.layer|layers)\.(\d+)\.", r"encoder.layers.encoder_layer_\2."),
                (r"\.layernorm_before\.", ".ln_1."),
                (r"\.layernorm_after\.", ".ln_2."),
                *_HF_QKV,
                (r"\.attention\.(output\.dense|o_proj)\.", ".self_attention.out_proj."),
                (r"\.(intermediate\.dense|mlp\.fc1)\.", ".mlp.0."),
                (r"\.(output\.dense|mlp\.fc2)\.", ".mlp.3."),
                (r"^layernorm\.", "encoder.ln."),
                (r"^classifier\.", "heads.head.")),
        exclude=(r"^pooler\.",),
        adapt=({"fuse": [r"(.*)\.attn\.q\.(weight|bias)", r"\1.attn.k.\2", r"\1.attn.v.\2"],
                "into": r"\1.self_attention.in_proj_\2", "dim": 0},)),
    "timm_resnet_to_torchvision": Preset(
        source="timm resnet18/34/50/101/152 (plain stem; not the -d/-s/-t variants)",
        target="torchvision resnet18/34/50/101/152",
        description="the same key names and shapes (conv1, bn1, layer1-4, fc): nothing to map. The preset says so "
                    "and is tested like the others; timm's deep-stem and avg-down variants differ and are not covered."),
    "torchvision_resnet_to_timm": Preset(
        source="torchvision resnet18/34/50/101/152",
        target="timm resnet18/34/50/101/152 (plain stem; not the -d/-s/-t variants)",
        description="the reverse of timm_resnet_to_torchvision: the same key names and shapes, nothing to map."),
}
assert tuple(PRESETS) == PRESET_NAMES, "PresetName and PRESETS list the same presets, in the same order"
