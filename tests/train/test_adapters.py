"""A LoRA build end to end: base weights untouched, adapters and head trained, merged and separate exports
that give the run's logits, the feature cache refused, and an exact resume after SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipec.compiler.compile import compile_recipe
from recipec.model.adapters import merge_adapters
from recipec.pipeline.build import build
from recipec.recipe.load import load_recipe
from recipec.train.state import load_state
from tests.tinyrecipes import killed_build, read_metrics, same_weights, write_recipe

peft = pytest.importorskip("peft")
pytest.importorskip("timm")

LORA = """\
name: vitlora
seed: 3
device: cpu
model: {arch: timm/vit_tiny_patch16_224, weights: null, head: {num_classes: 10},
        kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}
freeze: {trainable: [head]}
adapters: {method: lora, r: 4, alpha: 8, target: attention}
optimizer: {name: adamw, lr: 1.0e-2, weight_decay: 0.01}
data: {dataset: digits, image_size: 32, per_class: 10, batch_size: 32}
train: {epochs: 2}
export: {formats: [safetensors], weights: last, adapters: both}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    return build(load_recipe(write_recipe(tmp, LORA)), out=tmp / "run")


def _recipe(run: Path, *overrides: str):  # the run's own recipe (paths relative to it)
    return load_recipe(run / "recipe.yaml", list(overrides))


def _unmerged(run: Path) -> torch.nn.Module:
    """The run's last model with its adapters, as training left it."""
    compiled = compile_recipe(_recipe(run))
    compiled.model.load_state_dict(load_state(run / "checkpoints" / "last.pt")["model"])
    return compiled.model.eval()


def _base(run: Path) -> torch.nn.Module:
    """The model before training, without adapters (same seed: the same random initialisation)."""
    return compile_recipe(_recipe(run, "adapters=null", "export.adapters=merged")).model.eval()


def test_base_weights_stay_bit_identical_adapters_and_head_train(run):
    start = compile_recipe(_recipe(run)).model.state_dict()
    end = load_state(run / "checkpoints" / "last.pt")["model"]
    assert start.keys() == end.keys()
    changed = {k for k in end if not torch.equal(start[k], end[k])}
    lora_b = {k for k in end if ".lora_B." in k}
    assert lora_b and lora_b <= changed  # B starts at zero: every B moved
    assert {"head.weight", "head.bias"} <= changed
    assert changed <= {k for k in end if ".lora_" in k} | {"head.weight", "head.bias"}
    refused = read_metrics(run)[0]["feature_cache_refused"]
    assert "adapters train inside the backbone" in refused


def test_merged_export_is_a_plain_model_with_the_unmerged_logits(run):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = _base(run)
    exported = load_file(run / "model.safetensors")
    assert set(exported) == set(plain.state_dict())  # no lora_ or base_layer keys: a plain architecture
    plain.load_state_dict(exported)
    with torch.no_grad():
        assert torch.allclose(plain(x), _unmerged(run)(x), atol=1e-5, rtol=0)


def test_peft_loads_the_separate_export_on_the_same_base(run):
    assert sorted(p.name for p in (run / "adapters").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "provenance.json"]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = peft.PeftModel.from_pretrained(_base(run), str(run / "adapters")).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), _unmerged(run)(x), atol=1e-5, rtol=0)
    card = (run / "README.md").read_text()
    assert "- **Adapters:** LORA (peft), r 4, alpha 8, on 4 modules (attention)" in card


def test_recipec_load_rebuilds_base_and_adapters_from_the_separate_export(run):
    import recipec

    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    merged = recipec.load(run / "model.safetensors")
    for path in (run / "adapters", run / "adapters" / "adapter_model.safetensors"):
        model = recipec.load(path)
        assert not any(".lora_" in k for k in model.state_dict())  # merged: the plain architecture
        with torch.no_grad():
            assert torch.allclose(model(x), merged(x), atol=1e-5, rtol=0)


@pytest.mark.slow  # two builds and a subprocess: ~60 s on two busy cores
def test_sigkill_then_resume_with_adapters_is_exact(tmp_path, run):
    recipe_file = write_recipe(tmp_path, LORA.replace("epochs: 2", "epochs: 2, keep_last: 3"))
    whole = build(load_recipe(recipe_file), out=tmp_path / "whole")
    killed = killed_build("build", str(recipe_file), "--out", str(tmp_path / "cut"), "--quiet", at=2)
    assert killed.returncode == -9, killed.stderr
    assert load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = build(load_recipe(recipe_file), out=tmp_path / "cut", resume=True)
    a, b = (load_state(r / "checkpoints" / "last.pt") for r in (whole, resumed))
    assert a["model"].keys() == b["model"].keys() and any(".lora_A." in k for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert same_weights(whole, resumed)


def test_ema_and_amp_with_adapters_export_the_merged_ema_weights(tmp_path):
    body = (LORA.replace("train: {epochs: 2}", "train: {epochs: 2, ema: {decay: 0.9}, amp: bf16}")
            .replace("weights: last, adapters: both", "weights: ema"))
    run = build(load_recipe(write_recipe(tmp_path, body)), out=tmp_path / "run")
    ema = load_state(run / "checkpoints" / "last.pt")["extra"]["ema"]["state"]
    assert any(".lora_B." in k for k in ema) and not (run / "adapters").exists()
    compiled = compile_recipe(_recipe(run))
    compiled.model.load_state_dict(ema)
    merge_adapters(compiled.model)
    exported = load_file(run / "model.safetensors")
    merged = compiled.model.state_dict()
    assert exported.keys() == merged.keys()
    assert all(torch.allclose(exported[k], merged[k], atol=1e-6, rtol=0) for k in merged)
    assert "val_acc_ema" in read_metrics(run)[-1]
