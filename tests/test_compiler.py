"""compile_recipe end to end: checkpoints saved the ways people save them, mapped by a recipe
and reported fully loaded; the seed transfer-learning patterns, each from a recipe."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from recipec.compiler.compile import compile_recipe
from recipec.errors import CheckpointError, DeviceError, GroupError, TransferError
from recipec.recipe.load import load_recipe


def _recipe(tmp_path: Path, body: str, *overrides: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path, overrides)


@pytest.fixture(scope="module")
def resnet_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None, num_classes=10).state_dict()


RESNET_FROM = """\
    name: t
    device: cpu
    model: {{arch: resnet18, head: {{num_classes: 10}}}}
    source:
      checkpoint: {ckpt}
      rename: {rename}
    train: {{epochs: 2}}
"""


def _save_layout(layout: str, sd: dict[str, torch.Tensor], tmp_path: Path) -> tuple[Path, list]:
    """Save `sd` as people do; return the file and the rename rules a recipe needs for it."""
    if layout == "raw":
        path = tmp_path / "raw.pth"
        torch.save(sd, path)
        return path, []
    if layout == "model_state_dict":
        path = tmp_path / "ckpt.pt"
        torch.save({"model_state_dict": sd, "epoch": 7, "optimizer_state_dict": {}}, path)
        return path, []
    if layout == "lightning":
        path = tmp_path / "epoch=3.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3,
                    "hyper_parameters": {"lr": 0.1}}, path)
        return path, [[r"^model\.", ""]]
    if layout == "ddp":
        path = tmp_path / "ddp.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
        return path, [[r"^module\.", ""]]
    if layout == "compile":
        path = tmp_path / "compiled.pt"
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path)
        return path, [[r"^_orig_mod\.", ""]]
    if layout == "safetensors":
        path = tmp_path / "model.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
        return path, []
    if layout == "sharded":
        from recipec.weights import formats

        files = formats.save(sd, tmp_path / "shards" / "model.safetensors", shard_size=4_000_000)
        index = [f for f in files if f.name.endswith(".index.json")]
        assert len(files) > 3 and index
        return index[0], []
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["raw", "model_state_dict", "lightning", "ddp", "compile", "safetensors", "sharded"])
def test_every_common_layout_loads_fully(layout, resnet_sd, tmp_path):
    path, rename = _save_layout(layout, resnet_sd, tmp_path)
    recipe = _recipe(tmp_path, RESNET_FROM.format(ckpt=path, rename=json.dumps(rename)))
    compiled = compile_recipe(recipe)
    report = compiled.load_report
    # the new 10-class head has the source head's shape, so it loads too
    assert sorted(report.loaded) == sorted(resnet_sd)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == [] and report.new == []
    model_sd = compiled.model.state_dict()
    for key in resnet_sd:
        assert torch.equal(model_sd[key], resnet_sd[key]), key


def test_lightning_without_rename_fails_listing_missing_keys(resnet_sd, tmp_path):
    path, _ = _save_layout("lightning", resnet_sd, tmp_path)
    recipe = _recipe(tmp_path, RESNET_FROM.format(ckpt=path, rename=[]))
    with pytest.raises(TransferError) as info:
        compile_recipe(recipe)
    assert "conv1.weight" in str(info.value)


def test_exclude_head_and_skip_mismatch_are_reported(resnet_sd, tmp_path):
    path = tmp_path / "imagenet-like.pt"
    sd = dict(resnet_sd)
    sd["fc.weight"] = torch.zeros(1000, 512)
    sd["fc.bias"] = torch.zeros(1000)
    torch.save(sd, path)
    # on_mismatch: skip, the head is not excluded -> mismatches reported with both shapes
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 5}}}}
        source: {{checkpoint: {path}, on_mismatch: skip}}
        train: {{epochs: 1}}
    """)
    report = compile_recipe(recipe).load_report
    mismatched = {m["key"]: (m["source_shape"], m["model_shape"]) for m in report.mismatched}
    assert mismatched == {"fc.weight": ([1000, 512], [5, 512]), "fc.bias": ([1000], [5])}
    # exclude the head instead: no mismatch, the head is new
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 5}}}}
        source: {{checkpoint: {path}, exclude: ['^fc\\.']}}
        train: {{epochs: 1}}
    """)
    report = compile_recipe(recipe).load_report
    assert report.mismatched == []
    assert sorted(e["key"] for e in report.excluded) == ["fc.bias", "fc.weight"]
    assert sorted(report.new) == ["fc.bias", "fc.weight"]


def test_mismatch_error_names_both_shapes(resnet_sd, tmp_path):
    path = tmp_path / "imagenet-like.pt"
    sd = dict(resnet_sd, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(sd, path)
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 5}}}}
        source: {{checkpoint: {path}}}
        train: {{epochs: 1}}
    """)
    with pytest.raises(TransferError, match=r"fc\.weight") as info:
        compile_recipe(recipe)
    assert "1000" in str(info.value)


def test_truncate_pad_and_class_subset_from_a_recipe(resnet_sd, tmp_path):
    path = tmp_path / "ten-classes.pt"
    torch.save(resnet_sd, path)
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 3}}}}
        source:
          checkpoint: {path}
          adapt:
            - {{match: '^fc\\.', rule: class_subset, indices: [7, 0, 2]}}
        train: {{epochs: 1}}
    """)
    model = compile_recipe(recipe).model
    assert torch.equal(model.fc.weight, resnet_sd["fc.weight"][[7, 0, 2]])
    assert torch.equal(model.fc.bias, resnet_sd["fc.bias"][[7, 0, 2]])
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, head: {{num_classes: 12}}}}
        source:
          checkpoint: {path}
          adapt: [{{match: '^fc\\.', rule: truncate_pad}}]
        train: {{epochs: 1}}
    """)
    compiled = compile_recipe(recipe)
    fc = compiled.model.fc
    assert torch.equal(fc.weight[:10], resnet_sd["fc.weight"]) and torch.count_nonzero(fc.weight[10:]) == 0
    assert {a["key"] for a in compiled.load_report.adapted} == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("channels", [1, 4])
def test_input_channel_adaptation_from_a_recipe(channels, resnet_sd, tmp_path):
    from recipec.weights.adapt import adapt_input_channels

    path = tmp_path / "rgb.pt"
    torch.save(resnet_sd, path)
    recipe = _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: resnet18, in_channels: {channels}, head: {{num_classes: 10}}}}
        source:
          checkpoint: {path}
          adapt: [{{match: '^conv1\\.weight$', rule: input_channels}}]
        train: {{epochs: 1}}
    """)
    compiled = compile_recipe(recipe)
    expected = adapt_input_channels(resnet_sd["conv1.weight"], channels)
    assert torch.equal(compiled.model.conv1.weight, expected)
    assert compiled.model(torch.randn(2, channels, 32, 32)).shape == (2, 10)


def test_vgg_sequential_last_and_mlp_head(tmp_path):
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: vgg11, head: {num_classes: 4, type: mlp, hidden: [64, 32], activation: gelu, dropout: 0.1}}
        freeze: {trainable: [head]}
        train: {epochs: 1}
    """)
    compiled = compile_recipe(recipe)
    head = compiled.model.classifier[6]
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 64), (64, 32), (32, 4)]
    assert any(isinstance(m, torch.nn.GELU) for m in head.modules())
    assert compiled.head.path == "classifier.6"
    trainable = {n for n, p in compiled.model.named_parameters() if p.requires_grad}
    assert trainable == {f"classifier.6.{n}" for n, _ in head.named_parameters()}


def test_freeze_all_but_classifier_counts(tmp_path):
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, head: {num_classes: 5}}
        freeze: {trainable: [head]}
        train: {epochs: 1}
    """)
    compiled = compile_recipe(recipe)
    trainable = sum(p.numel() for p in compiled.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in compiled.model.parameters())
    assert trainable == 512 * 5 + 5
    plan = compiled.plan.to_dict()
    assert plan["parameters"] == {"total": total, "trainable": [trainable]}


def test_seed_gradual_unfreezing_and_discriminative_adamw(tmp_path):
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, head: {num_classes: 5}}
        freeze:
          trainable: [head]
          unfreeze: {5: [layer4], 10: [layer3], 15: [layer2], 20: [layer1], 25: [stem]}
        optimizer: {name: adamw, lr: 1.0e-3, lr_decay: 2.6, weight_decay: 0.01}
        train: {epochs: 30}
    """)
    compiled = compile_recipe(recipe)
    groups = compiled.plan.to_dict()["groups"]
    assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    starts = {g["name"]: g["trainable"].index(True) for g in groups}
    assert starts == {"head": 0, "layer4": 5, "layer3": 10, "layer2": 15, "layer1": 20, "stem": 25}
    for i, g in enumerate(groups):
        assert g["lr"][0] == pytest.approx(1e-3 / 2.6 ** (5 - i), rel=1e-12)
    assert isinstance(compiled.optimizer, torch.optim.AdamW)
    by_name: dict[str, set[float]] = {}
    for pg in compiled.optimizer.param_groups:
        by_name.setdefault(pg["name"], set()).add(pg["lr"])
        assert pg["weight_decay"] in (0.0, 0.01)
    assert {n: v.pop() for n, v in by_name.items()} == pytest.approx(
        {g["name"]: 1e-3 / 2.6 ** (5 - i) for i, g in enumerate(groups)}, rel=1e-12)
    # gradual: {every: 5, start: 5} is the same schedule
    gradual = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, head: {num_classes: 5}}
        freeze: {trainable: [head], gradual: {every: 5, start: 5}}
        train: {epochs: 30}
    """)
    assert [g["trainable"] for g in compile_recipe(gradual).plan.to_dict()["groups"]] == [
        g["trainable"] for g in groups]


def test_unknown_group_in_schedule_is_located(tmp_path):
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, head: {num_classes: 5}}
        freeze: {trainable: [head, layer9]}
        train: {epochs: 1}
    """)
    with pytest.raises(GroupError) as info:
        compile_recipe(recipe)
    assert ("freeze", "trainable", 1) in info.value.paths


def test_missing_checkpoint_and_sha_pin(resnet_sd, tmp_path):
    recipe = _recipe(tmp_path, RESNET_FROM.format(ckpt=tmp_path / "nope.pt", rename=[]))
    with pytest.raises(CheckpointError) as info:
        compile_recipe(recipe)
    assert info.value.paths[0] == ("source", "checkpoint")
    path = tmp_path / "raw.pt"
    torch.save(resnet_sd, path)
    recipe = _recipe(tmp_path, RESNET_FROM.format(ckpt=path, rename=[]), "source.sha256=" + "ab" * 32)
    with pytest.raises(CheckpointError, match="sha256") as info:
        compile_recipe(recipe)
    assert info.value.paths[0] == ("source", "sha256")


def test_absent_device_is_an_input_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = _recipe(tmp_path, """\
        name: t
        device: cuda:0
        model: {arch: resnet18}
        train: {epochs: 1}
    """)
    with pytest.raises(DeviceError) as info:
        compile_recipe(recipe)
    assert info.value.paths == [("device",)]


def test_pretrained_weights_from_the_hub_cache(resnet_sd, tmp_path, monkeypatch):
    from recipec.model import pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = pretrained.resolve_weights("resnet18", "IMAGENET1K_V1")
    cached = pretrained.weights_cache_path(weights)
    cached.parent.mkdir(parents=True)
    standin = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(standin, cached)
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, weights: IMAGENET1K_V1, head: {num_classes: 3}}
        train: {epochs: 1}
    """)
    compiled = compile_recipe(recipe)
    report = compiled.reports["model.weights"]
    assert sorted(report.new) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(standin) - 2
    assert torch.equal(compiled.model.layer4[1].conv2.weight, standin["layer4.1.conv2.weight"])
    mean, std = compiled.normalization
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


def test_pretrained_weights_adapted_to_one_input_channel(tmp_path, monkeypatch):
    from recipec.model import pretrained
    from recipec.weights.adapt import adapt_input_channels

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = pretrained.weights_cache_path(pretrained.resolve_weights("resnet18", "IMAGENET1K_V1"))
    cached.parent.mkdir(parents=True)
    standin = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(standin, cached)
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: resnet18, weights: IMAGENET1K_V1, in_channels: 1, head: {num_classes: 3}}
        train: {epochs: 1}
    """)
    compiled = compile_recipe(recipe)
    assert torch.equal(compiled.model.conv1.weight, adapt_input_channels(standin["conv1.weight"], 1))
    adapted = compiled.reports["model.weights"].adapted
    assert adapted == [{"key": "conv1.weight", "rule": "input_channels",
                        "source_shape": [64, 3, 7, 7], "model_shape": [64, 1, 7, 7]}]
    assert compiled.model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
