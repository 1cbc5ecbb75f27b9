"""adapters: (LoRA/DoRA through peft) compiled like freezing: base weights fixed, adapters in their module's group.

Tiny models: a timm ViT (img_size 32, patch 8, 2 blocks of width 32) and torchvision resnet18 at 32 px (Conv2d
adapters); no training loop here (tests/train/test_adapters.py builds runs).
"""

from __future__ import annotations

import pytest
import torch

from recipec.compiler.compile import compile_recipe
from recipec.errors import ModelError, RecipeError
from recipec.model.adapters import merge_adapters
from recipec.recipe.load import load_recipe
from recipec.train.freezing import apply_trainable, set_train_mode
from tests.tinyrecipes import run_cli, write_recipe

pytest.importorskip("peft")
pytest.importorskip("timm")

VIT = """\
name: vit
device: cpu
model: {arch: timm/vit_tiny_patch16_224, weights: null, head: {num_classes: 3},
        kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}
freeze: {trainable: [head]}
adapters: {r: 4, alpha: 8, target: attention}
optimizer: {name: adamw, lr: 1.0e-2, lr_decay: 2, weight_decay: 0.1}
data: {dataset: fake, image_size: 32}
train: {epochs: 2}
"""
RESNET = """\
name: resnet
device: cpu
model: {arch: resnet18, weights: null, head: {num_classes: 3}}
freeze: {trainable: [head]}
adapters: {method: dora, r: 2, target: ['layer4\\.\\d+\\.conv2$']}
data: {dataset: fake, image_size: 32}
train: {epochs: 1}
"""


def _compile(tmp_path, body, *overrides):
    return compile_recipe(load_recipe(write_recipe(tmp_path, body), list(overrides)))


def _step(compiled, x):
    compiled.model.train()
    loss = compiled.model(x).logsumexp(dim=1).mean()  # any loss that reaches every output
    loss.backward()
    compiled.optimizer.step()
    compiled.optimizer.zero_grad()


@pytest.mark.parametrize("body", [VIT, RESNET], ids=["timm-vit", "torchvision-resnet-conv2d"])
def test_a_step_trains_adapters_and_head_only_and_merging_keeps_the_logits(tmp_path, body):
    compiled = _compile(tmp_path, body)
    before = {k: v.clone() for k, v in compiled.model.state_dict().items()}
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):
        _step(compiled, x)
    after = compiled.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k]) and "running_" not in k
               and "num_batches" not in k}
    adapters = {k for k in after if ".lora_" in k}
    head = "head." if "vit" in body else "fc."
    assert adapters and changed == adapters | {k for k in after if k.startswith(head)}
    assert any(".base_layer." in k for k in after)  # the adapted modules' base weights: among the unchanged

    compiled.model.eval()
    with torch.no_grad():
        unmerged = compiled.model(x)
        merged_names = merge_adapters(compiled.model)
        merged = compiled.model(x)
    assert merged_names and not any(".lora_" in k or "base_layer" in k for k in compiled.model.state_dict())
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=0)


def test_adapters_take_their_groups_lr_and_weight_decay(tmp_path):
    compiled = _compile(tmp_path, VIT)
    names = {id(p): n for n, p in compiled.model.named_parameters()}
    for pg in compiled.optimizer.param_groups:
        lora = [names[id(p)] for p in pg["params"] if ".lora_" in names[id(p)]]
        assert all(n.startswith(pg["name"] + ".") for n in lora), (pg["name"], lora)
    by_group = {(pg["name"], pg["no_decay"]): pg for pg in compiled.optimizer.param_groups}
    assert by_group[("blocks.0", False)]["lr"] == pytest.approx(1e-2 / 2 ** 2)  # lr_decay 2, two groups below head
    assert by_group[("blocks.0", False)]["weight_decay"] == 0.1  # lora_A/B weights decay like the group's weights
    trainable = {n for n, p in compiled.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names.values() if ".lora_" in n or n.startswith("head.")}


def test_plan_shows_adapters_per_group_and_the_optimizer_state(tmp_path):
    compiled = _compile(tmp_path, VIT)
    a = compiled.plan.data["adapters"]
    assert a["modules"] == 4 and set(a["groups"]) == {"blocks.0", "blocks.1"}
    assert a["groups"]["blocks.0"]["modules"] == ["blocks.0.attn.proj", "blocks.0.attn.qkv"]
    # qkv: A (4 x 32) + B (96 x 4); proj: A (4 x 32) + B (32 x 4); per block
    assert a["groups"]["blocks.0"]["adapter_params"] == 4 * 32 + 96 * 4 + 4 * 32 + 32 * 4
    head = 32 * 3 + 3
    assert a["trainable"] == [a["adapter_params"] + head] * 2
    assert compiled.plan.data["parameters"]["trainable"] == a["trainable"]
    assert a["optimizer_state_bytes"] == a["trainable"][0] * 2 * 4  # adamw: two fp32 states per parameter
    text = compiled.plan.text()
    assert "adapters  lora r=4 alpha=8" in text and "blocks.1: 2 adapted" in text


def test_unfreeze_opens_a_group_but_never_its_adapted_base_weights(tmp_path):
    compiled = _compile(tmp_path, VIT, "freeze.unfreeze={1: [blocks.1]}")
    apply_trainable(compiled.model, compiled.groups, compiled.schedule.trainable_at(1))
    trainable = {n for n, p in compiled.model.named_parameters() if p.requires_grad}
    assert "blocks.1.mlp.fc1.weight" in trainable and "blocks.0.mlp.fc1.weight" not in trainable
    assert "blocks.1.attn.qkv.base_layer.weight" not in trainable


@pytest.mark.parametrize(("adapters", "expected"), [
    ("{target: ['nothing_here$']}", r"adapters\.target\.0: 'nothing_here\$' matches no nn.Linear or nn.Conv2d"),
    ("{target: mlp, groups: [stem]}", r"adapters\.target: the preset 'mlp' matches no module"),
    ("{target: ['blocks\\.0\\.attn\\.qkv$'], groups: [blocks.0, blocks.1]}",
     r"adapters\.groups\.1: group 'blocks.1' has no module that adapters.target adapts"),
])
def test_a_target_or_group_without_an_adapted_module_is_an_error(tmp_path, adapters, expected):
    with pytest.raises(ModelError, match=expected):
        _compile(tmp_path, VIT.replace("{r: 4, alpha: 8, target: attention}", adapters))


def test_the_section_is_validated_like_every_other(tmp_path):
    bad = VIT.replace("{r: 4, alpha: 8, target: attention}", "{r: 0, methd: lora, target: foo}")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, bad))
    text = str(info.value)
    assert "tiny.yaml:6:" in text and "adapters.r" in text and "did you mean 'method'" in text
    assert "adapters.target" in text
    with pytest.raises(RecipeError, match="train.compile: is not supported with adapters"):
        load_recipe(write_recipe(tmp_path, VIT), ["train.compile=true"])
    with pytest.raises(RecipeError, match="export.adapters: separate needs an adapters: section"):
        load_recipe(write_recipe(tmp_path, VIT.replace("adapters: {r: 4, alpha: 8, target: attention}\n", "")),
                    ["export.adapters=separate"])


def test_separate_export_refuses_a_schedule_that_trains_base_groups(tmp_path):
    with pytest.raises(ModelError, match=r"export\.adapters: separate writes the adapters and the head only.*blocks\.1"):
        _compile(tmp_path, VIT, "freeze.unfreeze={1: [blocks.1]}", "export.adapters=separate")


def test_cli_locates_a_target_that_matches_nothing(tmp_path, capsys):
    path = write_recipe(tmp_path, VIT.replace("target: attention", "target: ['nothing$']"))
    code, _, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and f"error: {path}:6:" in err and "adapters.target.0" in err


def test_adapter_dropout_stays_random_inside_a_frozen_group(tmp_path):
    compiled = _compile(tmp_path, VIT.replace("target: attention", "target: attention, dropout: 0.5"))
    set_train_mode(compiled.model, compiled.groups, compiled.schedule.trainable_at(0))
    modes = {n: m.training for n, m in compiled.model.named_modules()}
    assert modes["blocks.0.attn.qkv.lora_dropout.default"] is True
    assert modes["blocks.0.attn.qkv"] is False and modes["blocks.0.attn.qkv.base_layer"] is False


def test_transformers_vit_attention_preset(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tests.model.hfhub import SIDE, save_folder

    save_folder(tmp_path / "models" / "vit", "vit")
    monkeypatch.chdir(tmp_path)
    body = (VIT.replace("arch: timm/vit_tiny_patch16_224, weights: null", "arch: hf/./models/vit, weights: DEFAULT")
            .replace("\n        kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}", "")
            .replace("image_size: 32", f"image_size: {SIDE}"))
    compiled = _compile(tmp_path, body)
    adapted = [m for g in compiled.plan.data["adapters"]["groups"].values() for m in g["modules"]]
    # transformers 5 names them q_proj, k_proj, v_proj, o_proj; 4.x query, key, value and attention.output.dense
    assert {m.rsplit(".", 1)[1] for m in adapted} in ({"q_proj", "k_proj", "v_proj", "o_proj"},
                                                     {"query", "key", "value", "dense"})
    assert len(adapted) == 4 * len(compiled.plan.data["adapters"]["groups"])
    assert all(".attention." in m for m in adapted)
    before = {k: v.clone() for k, v in compiled.model.state_dict().items()}
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    _step(compiled, x)
    after = compiled.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if ".lora_" not in k and ".classifier." not in k)
    compiled.model.eval()
    with torch.no_grad():
        unmerged = compiled.model(x)
        merge_adapters(compiled.model)
        assert torch.allclose(compiled.model(x), unmerged, atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="export.adapters: separate is not supported yet for hf/./models/vit"):
        _compile(tmp_path, body, "export.adapters=separate")
