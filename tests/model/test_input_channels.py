"""``model.in_channels`` after ``model.weights``: the rebuilt first convolution keeps every pretrained tensor,
its bias too, and the load report stays true of the model (issue 25, item 11). The models here have a biased
stem, unlike resnet18's ``conv1``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import torchvision

from recipec.compiler.compile import compile_recipe
from recipec.model import pretrained
from recipec.recipe.load import load_recipe
from recipec.weights.adapt import adapt_input_channels
from tests.model.timmhub import stand_in


def _recipe(tmp_path: Path, model: str) -> Any:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        device: cpu
        model: {model}
        train: {{epochs: 1}}
        """))
    return load_recipe(path)


def _check(compiled: Any, source: dict[str, torch.Tensor], stem: str, head: str) -> None:
    report = compiled.reports["model.weights"]
    state = compiled.model.state_dict()
    assert set(report.loaded) == {k for k in source if not k.startswith(head)} and not report.missing
    assert [a["key"] for a in report.adapted if a["rule"] == "input_channels"] == [f"{stem}.weight"]
    assert torch.equal(state[f"{stem}.weight"], adapt_input_channels(source[f"{stem}.weight"], 1))
    assert torch.equal(state[f"{stem}.bias"], source[f"{stem}.bias"])
    adapted = {a["key"] for a in report.adapted}
    untrue = [k for k in report.loaded if k not in adapted and not torch.equal(state[k], source[k])]
    assert untrue == []  # every key reported loaded holds the pretrained tensor


def test_a_biased_torchvision_stem_keeps_its_pretrained_bias(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = pretrained.weights_cache_path(pretrained.resolve_weights("squeezenet1_1", "IMAGENET1K_V1"))
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    source = torchvision.models.squeezenet1_1(weights=None).state_dict()
    source["features.0.bias"] = torch.linspace(-1, 1, 64)  # nothing a fresh conv would draw
    torch.save(source, cached)
    compiled = compile_recipe(_recipe(tmp_path, "{arch: squeezenet1_1, weights: IMAGENET1K_V1, in_channels: 1, "
                                                "head: {num_classes: 3}}"))
    _check(compiled, source, "features.0", "classifier.1.")
    assert compiled.model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_a_timm_vit_patch_embedding_keeps_its_pretrained_bias(tmp_path, offline):
    pytest.importorskip("timm")  # an optional extra
    home, attempts = offline
    source = stand_in(home, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    source["patch_embed.proj.bias"] = torch.linspace(-1, 1, 192)  # nothing a fresh conv would draw
    safetensors.torch.save_file(source, next((home / "hub").rglob("model.safetensors")))
    compiled = compile_recipe(_recipe(tmp_path, "{arch: timm/vit_tiny_patch16_224, weights: augreg_in21k_ft_in1k, "
                                                "kwargs: {img_size: 32}, in_channels: 1, head: {num_classes: 3}}"))
    # pos_embed is adapted to the 2x2 grid; every other loaded key is the stand-in's own tensor
    assert [a["key"] for a in compiled.reports["model.weights"].adapted] == ["pos_embed", "patch_embed.proj.weight"]
    _check(compiled, source, "patch_embed.proj", "head.")
    assert compiled.model(torch.randn(2, 1, 32, 32)).shape == (2, 3) and not attempts
