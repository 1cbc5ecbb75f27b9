"""Every shipped preset on a random-init pair of models: the mapped model computes what the source model does.

Each pair is tiny (hidden 32, 2 layers, 2 heads, 32x32 images, patch 8) with the same hyperparameters on
both sides; every source weight is perturbed, so a tensor mapped to the wrong place changes the output. The
Hugging Face side is written with ``save_pretrained`` and read back: the layout of the files on the hub.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from recipec.recipe.presets import PRESET_NAMES, PRESETS
from recipec.recipe.spec import AdaptSpec
from recipec.weights.transfer import TransferRules, apply_transfer

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOLERANCE = 1e-4
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2}
HF_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8}


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and float buffer moved off its init (layer scales of 1e-6, zero tokens, BN statistics)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.1
                tensor.copy_(tensor.abs() + noise.abs() if name.endswith("running_var") else tensor + noise)
    return model.eval()


def hub_files(model: Any, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The state dict as the hub holds it: save_pretrained, read back (transformers 5 renames in memory)."""
    transformers.logging.set_verbosity_error()
    model.save_pretrained(tmp_path / "hf")
    return safetensors_torch.load_file(tmp_path / "hf" / "model.safetensors")


Pair = tuple[dict[str, torch.Tensor], nn.Module, Callable[[torch.Tensor], torch.Tensor],
             Callable[[torch.Tensor], torch.Tensor]]


def hf_vit_logits(tmp_path: Path) -> Pair:
    hf = perturbed(transformers.ViTForImageClassification(transformers.ViTConfig(
        **HF_VIT, num_labels=3, layer_norm_eps=1e-6)))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY_VIT).eval()
    return hub_files(hf, tmp_path), model, lambda x: hf(pixel_values=x).logits, model


def hf_vit_in_memory_features(tmp_path: Path) -> Pair:
    # transformers 5's own names (layers.N.attention.q_proj ...) and the pooler, which timm has not
    hf = perturbed(transformers.ViTModel(transformers.ViTConfig(**HF_VIT, layer_norm_eps=1e-6)))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()
    return hf.state_dict(), model, lambda x: hf(pixel_values=x).last_hidden_state, model.forward_features


def hf_deit_distilled_logits(tmp_path: Path) -> Pair:
    hf = perturbed(transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        **HF_VIT, num_labels=3, layer_norm_eps=1e-6)))
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, **TINY_VIT).eval()
    return hub_files(hf, tmp_path), model, lambda x: hf(pixel_values=x).logits, model


def hf_dinov2_features(tmp_path: Path) -> Pair:
    hf = perturbed(transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8)))
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **TINY_VIT).eval()
    return hub_files(hf, tmp_path), model, lambda x: hf(pixel_values=x).last_hidden_state, model.forward_features


def hf_clip_features(tmp_path: Path) -> Pair:
    # the whole CLIPModel: the text tower and the projections are excluded by the preset
    hf = perturbed(transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "vocab_size": 50, "max_position_embeddings": 8},
        vision_config={**HF_VIT, "hidden_act": "quick_gelu"}, projection_dim=16)))
    model = timm.create_model("vit_base_patch32_clip_quickgelu_224", pretrained=False, num_classes=0, **TINY_VIT).eval()

    def hf_tokens(x: torch.Tensor) -> torch.Tensor:  # HF's post_layernorm makes the pooled token: here every token
        out = hf.vision_model(pixel_values=x)
        tokens = hf.vision_model.post_layernorm(out.last_hidden_state)
        assert torch.equal(tokens[:, 0], out.pooler_output)
        return tokens

    return hub_files(hf, tmp_path), model, hf_tokens, model.forward_features


def hf_convnext_logits(conv_mlp: bool) -> Callable[[Path], Pair]:
    def pair(tmp_path: Path) -> Pair:
        hf = perturbed(transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_labels=3, layer_norm_eps=1e-6)))
        model = timm.create_model("convnext_atto", pretrained=False, dims=(8, 16, 24, 32), depths=(1, 2, 1, 1),
                                  num_classes=3, conv_mlp=conv_mlp).eval()
        return hub_files(hf, tmp_path), model, lambda x: hf(pixel_values=x).logits, model
    pair.__name__ = f"hf_convnext_logits_conv_mlp_{conv_mlp}"
    return pair


def hf_vit_to_torchvision_logits(tmp_path: Path) -> Pair:
    hf = perturbed(transformers.ViTForImageClassification(transformers.ViTConfig(
        **HF_VIT, num_labels=3, layer_norm_eps=1e-6)))
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=3).eval()
    return hub_files(hf, tmp_path), model, lambda x: hf(pixel_values=x).logits, model


def timm_resnet_to_torchvision(tmp_path: Path) -> Pair:
    source = perturbed(timm.create_model("resnet18", pretrained=False, num_classes=3))
    model = torchvision.models.resnet18(num_classes=3).eval()
    return source.state_dict(), model, source, model


def torchvision_resnet_to_timm(tmp_path: Path) -> Pair:
    # bottleneck blocks with downsampling (timm's resnet26 is torchvision's ResNet(Bottleneck, [2, 2, 2, 2]))
    source = perturbed(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [2, 2, 2, 2],
                                                        num_classes=3), seed=1)
    model = timm.create_model("resnet26", pretrained=False, num_classes=3).eval()
    return source.state_dict(), model, source, model


PAIRS: list[tuple[str, Callable[[Path], Pair]]] = [
    ("hf_vit_to_timm", hf_vit_logits),
    ("hf_vit_to_timm", hf_vit_in_memory_features),
    ("hf_vit_to_timm", hf_deit_distilled_logits),
    ("hf_dinov2_to_timm", hf_dinov2_features),
    ("hf_clip_vision_to_timm", hf_clip_features),
    ("hf_convnext_to_timm", hf_convnext_logits(conv_mlp=True)),
    ("hf_convnext_to_timm", hf_convnext_logits(conv_mlp=False)),
    ("hf_vit_to_torchvision", hf_vit_to_torchvision_logits),
    ("timm_resnet_to_torchvision", timm_resnet_to_torchvision),
    ("torchvision_resnet_to_timm", torchvision_resnet_to_timm),
]


@pytest.mark.parametrize(("preset", "make"), PAIRS, ids=[f"{p}-{m.__name__}" for p, m in PAIRS])
def test_the_mapped_model_computes_what_the_source_model_computes(preset, make, tmp_path) -> None:
    torch.manual_seed(0)
    state, model, source_out, model_out = make(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, before = source_out(x), model_out(x)
        report = apply_transfer(model, state, TransferRules(preset=preset))
        got = model_out(x)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert set(report.loaded) | set(report.defaulted) == set(model.state_dict())
    assert (before - expected).abs().max() > 100 * TOLERANCE  # the check below can fail: loading changed the output
    assert (got - expected).abs().max() <= TOLERANCE


def test_every_preset_has_a_pair_and_valid_rules() -> None:
    assert tuple(PRESETS) == PRESET_NAMES and {p for p, _ in PAIRS} == set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.source and preset.target and preset.description, name
        for pattern, replacement in preset.rename:
            re.compile(pattern).sub(replacement, "")  # a valid pattern and template
        for pattern in preset.exclude:
            re.compile(pattern)
        for rule in preset.adapt:
            AdaptSpec(**rule)  # the syntax a recipe writes


def test_the_report_says_what_the_preset_fused_and_dropped(tmp_path) -> None:
    state, model, _, _ = hf_clip_features(tmp_path)
    report = apply_transfer(model, state, TransferRules(preset="hf_clip_vision_to_timm"))
    assert report.fate("blocks.1.attn.qkv.bias") == (
        "adapted by fuse [32] + [32] + [32] -> [96] along dim 0 from 'vision_model.encoder.layers.1.self_attn.q_proj.bias', "
        "'vision_model.encoder.layers.1.self_attn.k_proj.bias', 'vision_model.encoder.layers.1.self_attn.v_proj.bias'")
    assert report.fate("cls_token") == "adapted by reshape [32] -> [1,1,32] from 'vision_model.embeddings.class_embedding'"
    assert report.fate("visual_projection.weight") == r"excluded by '^(text|visual)_projection\.'"
    assert {e["pattern"] for e in report.excluded} == {r"^text_model\.", r"^(text|visual)_projection\.", r"^logit_scale$"}


def test_split_maps_timm_back_to_hugging_face_with_recipe_rules() -> None:
    """The reverse of hf_vit_to_timm written as a recipe would: split rules, no preset."""
    source = perturbed(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_VIT))
    hf = transformers.ViTModel(transformers.ViTConfig(**HF_VIT, layer_norm_eps=1e-6), add_pooling_layer=False).eval()
    rules = TransferRules(
        rename=[(r"^cls_token$", "embeddings.cls_token"), (r"^pos_embed$", "embeddings.position_embeddings"),
                (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."), (r"^blocks\.", "layers."),
                (r"\.norm1\.", ".layernorm_before."), (r"\.norm2\.", ".layernorm_after."),
                (r"\.attn\.proj\.", ".attention.o_proj."), (r"^norm\.", "layernorm.")],
        adapt=[{"split": r"(.*)\.attn\.qkv\.(weight|bias)", "dim": 0,
                "into": [r"\1.attention.q_proj.\2", r"\1.attention.k_proj.\2", r"\1.attention.v_proj.\2"]}])
    report = apply_transfer(hf, source.state_dict(), rules)
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (hf(pixel_values=x).last_hidden_state - source.forward_features(x)).abs().max() <= TOLERANCE
