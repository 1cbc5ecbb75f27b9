"""timm backbones (``model.arch: timm/<name>``): architectures, heads, groups, weights from the
hub cache (a stand-in), preprocessing, position-embedding resampling, exports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import recipec
from recipec.compiler.compile import compile_recipe
from recipec.errors import ModelError, RecipeError, WeightsUnavailableError
from recipec.recipe.load import dump_recipe, load_recipe
from tests.model.timmhub import stand_in

timm = pytest.importorskip("timm")  # an optional extra
pytest.importorskip("timm.optim")
from timm.layers import resample_abs_pos_embed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# (timm name, kwargs that make it small, input side). The default run covers one model per
# family; the slow sweep all of them.
FAST: list[tuple[str, dict[str, Any], int]] = [
    ("resnet10t", {}, 32),
    ("convnext_atto", {}, 32),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32),   # two classifiers: head and head_dist
    ("efficientnet_b0", {}, 32),
    ("mobilenetv3_small_050", {}, 32),
    ("regnetx_002", {}, 32),
    ("levit_128s", {"img_size": 64}, 64),                        # NormLinear head, distilled
    ("eva02_tiny_patch14_224", {"img_size": 28}, 28),           # RoPE, classifier-less pretrained_cfg
]
WIDE: list[tuple[str, dict[str, Any], int]] = FAST + [
    ("resnet18", {}, 32),
    ("convnextv2_atto", {}, 32),
    ("deit_tiny_patch16_224", {"img_size": 32}, 32),
    ("deit3_small_patch16_224", {"img_size": 32}, 32),          # no class token in pos_embed
    ("swin_tiny_patch4_window7_224", {"img_size": 56, "window_size": 7}, 56),
    ("vit_small_patch14_dinov2", {"img_size": 28}, 28),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28}, 28),   # register tokens
    ("ghostnet_050", {}, 32),
    ("mobilevit_xxs", {}, 64),
    ("densenet121", {}, 32),
    ("rexnet_100", {}, 32),
    ("mixer_s16_224", {"img_size": 32}, 32),
    ("cait_xxs24_224", {"img_size": 32}, 32),                   # class-attention blocks
    ("edgenext_xx_small", {}, 64),
    ("fastvit_t8", {}, 64),
    ("mobilenetv4_conv_small", {}, 32),
    ("poolformer_s12", {}, 32),                                  # no group_matcher: body and head
    ("efficientvit_m0", {"img_size": 64}, 64),
    ("hgnetv2_b0", {}, 32),
    ("xcit_nano_12_p16_224", {"img_size": 32}, 32),
    ("coatnet_nano_rw_224", {"img_size": 64}, 64),
]


def _recipe(tmp_path: Path, body: str, *overrides: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path, overrides)


def _timm_recipe(tmp_path: Path, name: str, kwargs: dict[str, Any], *overrides: str, head: str = "{num_classes: 3}"):
    return _recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: timm/{name}, kwargs: {json.dumps(kwargs)}, head: {head}}}
        freeze: {{trainable: [head]}}
        optimizer: {{name: adamw, lr: 0.01, lr_decay: 2}}
        train: {{epochs: 1}}
        """, *overrides)


def _check_architecture(tmp_path: Path, name: str, kwargs: dict[str, Any], size: int) -> None:
    from recipec.pipeline.outputs import export_model
    from recipec.train.freezing import apply_trainable, set_train_mode

    recipe = _timm_recipe(tmp_path, name, kwargs)
    compiled = compile_recipe(recipe)
    model, groups = compiled.model, compiled.groups
    # plan: the old and the new head, every group, head last
    text = compiled.plan.text()
    assert f"head      {compiled.head.path}:" in text and "->  " in text
    assert [g["name"] for g in compiled.plan.data["groups"]] == [g.name for g in groups]
    assert groups[0].name in ("stem", "body") and groups[-1].name == "head"
    # groups partition the parameters
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups for n in g.params) == sorted(names)
    assert all(n in groups[-1].params for n in names if n.startswith(compiled.head_prefix))
    # head replaced: 3 classes out
    x = torch.randn(2, 3, size, size)
    model.eval()
    assert model(x).shape == (2, 3)

    # one training step changes exactly the trainable groups (the head and the last body group)
    trainable = [groups[-2].name, "head"]
    apply_trainable(model, groups, trainable)
    set_train_mode(model, groups, trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    output = model(x)
    output = output[0] if isinstance(output, tuple) else output
    F.cross_entropy(output, torch.tensor([0, 2])).backward()
    compiled.optimizer.step()
    after = dict(model.named_parameters())
    for group in groups:
        changed = [n for n in group.params if not torch.equal(before[n], after[n])]
        if group.name in trainable:
            assert changed, f"{group.name} did not train"
        else:
            assert not changed, f"frozen {group.name} changed: {changed[:3]}"

    # recipec.load rebuilds it from the export alone, exactly
    run = tmp_path / "run"
    run.mkdir()
    export_model(recipe, model, run, dump_recipe(recipe), {})
    loaded = recipec.load(run / "model.safetensors")
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    model.eval()
    with torch.no_grad():  # the same tensors; XCiT's kernels round differently on another memory layout (1 ulp)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs", "size"), FAST, ids=[a for a, _, _ in FAST])
def test_architecture(tmp_path, name, kwargs, size):
    _check_architecture(tmp_path, name, kwargs, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "size"), WIDE, ids=[a for a, _, _ in WIDE])
def test_architecture_sweep(tmp_path, name, kwargs, size):
    _check_architecture(tmp_path, name, kwargs, size)


def test_sweep_is_wide():
    families = {name.split("_")[0].rstrip("0123456789t").replace("v2", "") for name, _, _ in WIDE}
    assert len(WIDE) >= 20 and len(families) >= 15


# --------------------------------------------------------------------------- groups


def test_groups_are_named_after_timm_groups(tmp_path):
    coarse = compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}))
    assert [g.name for g in coarse.groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert coarse.groups[-1].params == ("fc.weight", "fc.bias")
    fine = compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}, "model.group_matcher=fine"))
    assert [g.name for g in fine.groups][:3] == ["stem", "layer1.0", "layer2.0"]
    convnext = compile_recipe(_timm_recipe(tmp_path, "convnext_atto", {}))
    # timm leaves the classifier's norm to the last layer: it trains (and is decayed) with the head
    assert convnext.groups[-1].params == ("head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias")


def test_group_matcher_is_for_timm_only(tmp_path):
    with pytest.raises(RecipeError, match="model.group_matcher: only applies to timm"):
        _recipe(tmp_path, "model: {arch: resnet18, group_matcher: fine}\n")


@pytest.mark.parametrize(("name", "kwargs"), [
    ("vit_tiny_patch16_224", {"img_size": 32}), ("convnext_atto", {}), ("resnet10t", {})])
def test_layer_decay_equals_timm(tmp_path, name, kwargs):
    layer_decay = 0.75
    compiled = compile_recipe(_timm_recipe(
        tmp_path, name, kwargs, "model.group_matcher=fine", "optimizer.lr=1.0", f"optimizer.lr_decay={1 / layer_decay!r}",
        "freeze.trainable=null"))
    ours = {id(p): group["lr"] for group in compiled.optimizer.param_groups for p in group["params"]}
    theirs = {id(p): group["lr_scale"] for group in timm.optim.param_groups_layer_decay(
        compiled.model, layer_decay=layer_decay) for p in group["params"]}
    named = dict(compiled.model.named_parameters())
    assert ours.keys() == theirs.keys() == {id(p) for p in named.values()}
    wrong = [n for n, p in named.items() if ours[id(p)] != pytest.approx(theirs[id(p)], rel=1e-12)]
    assert not wrong, [(n, ours[id(named[n])], theirs[id(named[n])]) for n in wrong[:5]]
    assert len(set(theirs.values())) == len(compiled.groups) > 5


# --------------------------------------------------------------------------- weights from the hub cache


def test_weights_load_from_the_hub_cache_offline(tmp_path, offline):
    home, attempts = offline
    state = stand_in(home, "resnet10t", "c3_in1k")
    compiled = compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}, "model.weights=DEFAULT"))
    report = compiled.reports["model.weights"]
    assert report.source == "timm/resnet10t.c3_in1k"
    assert set(report.loaded) == set(state) - {"fc.weight", "fc.bias"}
    assert torch.equal(compiled.model.conv1[0].weight, state["conv1.0.weight"])
    cfg = timm.models.get_pretrained_cfg("resnet10t.c3_in1k")
    weights = compiled.plan.data["weights"]
    assert weights["name"] == "timm/resnet10t.c3_in1k"
    assert weights["preprocessing"] == {"input_size": list(cfg.input_size), "interpolation": cfg.interpolation,
                                        "crop_pct": cfg.crop_pct, "crop_mode": cfg.crop_mode,
                                        "mean": list(cfg.mean), "std": list(cfg.std)}
    assert compiled.normalization == (cfg.mean, cfg.std)
    assert f"pretrain  input 3x{cfg.input_size[1]}x{cfg.input_size[2]}, {cfg.interpolation} resize" in compiled.plan.text()
    assert not attempts


def test_missing_weights_name_the_repository_and_download_nothing(tmp_path, offline):
    home, attempts = offline
    with pytest.raises(WeightsUnavailableError) as caught:
        compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}, "model.weights=c3_in1k"))
    message = str(caught.value)
    assert "model.weights" in message and "hub repository timm/resnet10t.c3_in1k" in message
    assert "file model.safetensors" in message and "RECIPEC_ALLOW_DOWNLOAD=1" in message
    assert not attempts and not (home / "hub").exists()


def test_downloads_only_when_allowed(tmp_path, offline, monkeypatch):
    _, attempts = offline
    monkeypatch.setenv("RECIPEC_ALLOW_DOWNLOAD", "1")
    with pytest.raises(WeightsUnavailableError, match=r"could not be downloaded from hub repository timm/resnet10t\.c3_in1k"):
        compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}, "model.weights=c3_in1k"))
    assert [a[:2] for a in attempts] == [("timm/resnet10t.c3_in1k", "model.safetensors"),
                                         ("timm/resnet10t.c3_in1k", "pytorch_model.bin")]


def test_custom_timm_factory_does_not_download(tmp_path, offline):
    recipe = _recipe(tmp_path, """\
        name: t
        device: cpu
        model: {arch: "timm:create_model", kwargs: {model_name: resnet10t, pretrained: true}, head: {num_classes: 3}}
        """)
    with pytest.raises(WeightsUnavailableError, match="RECIPEC_ALLOW_DOWNLOAD=1"):
        compile_recipe(recipe)
    assert not (offline[0] / "hub").exists()


def test_unknown_names_and_tags(tmp_path):
    with pytest.raises(ModelError, match=r"unknown timm architecture 'resnet_10t'; did you mean 'timm/resnet10t'"):
        compile_recipe(_timm_recipe(tmp_path, "resnet_10t", {}))
    with pytest.raises(ModelError, match=r"model.weights: unknown pretrained tag 'c3_in1' .* did you mean 'c3_in1k'"):
        compile_recipe(_timm_recipe(tmp_path, "resnet10t", {}, "model.weights=c3_in1"))
    with pytest.raises(ModelError, match=r"model.kwargs.pretrained: recipec loads weights itself"):
        compile_recipe(_timm_recipe(tmp_path, "resnet10t", {"pretrained": True}))


def test_without_timm_a_recipe_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails, find_spec finds nothing
    with pytest.raises(RecipeError, match=r"recipe.yaml:3:\d+: model.arch: .*pip install 'recipec\[timm\]'"):
        _timm_recipe(tmp_path, "resnet10t", {})
    from recipec.model.timm import build_timm

    with pytest.raises(ModelError, match=r"pip install 'recipec\[timm\]'"):
        build_timm("timm/resnet10t", {})


def test_validate_imports_no_torch(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {arch: timm/convnext_atto, weights: d2_in1k, head: {num_classes: 3}}\n")
    code = ("import sys; from recipec.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- position embeddings


@pytest.mark.parametrize(("tokens", "prefix", "grid"), [(197, 1, 4), (196, 0, 3), (1370, 1, 2), (785, 1, 16)])
def test_pos_embed_resample_equals_timm(tokens, prefix, grid):
    from recipec.weights.adapt import apply_rule

    torch.manual_seed(0)
    posemb = torch.randn(1, tokens, 8)
    ours = apply_rule("pos_embed", posemb, (1, prefix + grid * grid, 8))
    assert torch.equal(ours, resample_abs_pos_embed(posemb, [grid, grid], num_prefix_tokens=prefix))


def test_pos_embed_rule_refuses_what_it_cannot_resample():
    from recipec.errors import TransferError
    from recipec.weights.adapt import apply_rule

    with pytest.raises(TransferError, match="same dim"):
        apply_rule("pos_embed", torch.zeros(1, 197, 8), (1, 17, 16))
    with pytest.raises(TransferError, match="only square grids"):
        apply_rule("pos_embed", torch.zeros(1, 197, 8), (1, 1 + 4 * 6, 8))


def test_torchvision_vit_pos_embedding_is_resampled():
    from torchvision.models.vision_transformer import VisionTransformer

    from recipec.model.pretrained import position_embedding_adapts
    from recipec.weights.transfer import TransferRules, apply_transfer

    def vit(size: int) -> VisionTransformer:
        return VisionTransformer(image_size=size, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)

    source, model = vit(224).state_dict(), vit(64)
    adapt = position_embedding_adapts(model, source)
    assert adapt == [{"match": r"^encoder\.pos_embedding$", "rule": "pos_embed"}]
    report = apply_transfer(model, source, TransferRules(adapt=adapt))
    assert report.adapted == [{"key": "encoder.pos_embedding", "rule": "pos_embed", "source_shape": [1, 197, 16],
                               "model_shape": [1, 17, 16], "grid": "14x14 -> 4x4 (+1 prefix token)"}]
    assert torch.equal(model.encoder.pos_embedding,
                       resample_abs_pos_embed(source["encoder.pos_embedding"], [4, 4], num_prefix_tokens=1))


def test_vit_at_64px_from_224px_weights_plans_and_builds(tmp_path, offline):
    home, _ = offline
    state = stand_in(home, "vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    recipe = _recipe(tmp_path, """\
        name: vit64
        device: cpu
        model: {arch: timm/vit_tiny_patch16_224, weights: augreg_in21k_ft_in1k, kwargs: {img_size: 64},
                head: {num_classes: 10}}
        freeze: {trainable: [head]}
        data: {dataset: digits, image_size: 64, per_class: 4, val_fraction: 0.02, batch_size: 20}
        train: {epochs: 1}
        """)
    compiled = compile_recipe(recipe)
    assert ("adapted     pos_embed: pos_embed [1, 197, 192] -> [1, 17, 192], grid 14x14 -> 4x4 (+1 prefix token)"
            in compiled.plan.text())
    assert torch.equal(compiled.model.pos_embed, resample_abs_pos_embed(state["pos_embed"], [4, 4]))
    run = recipec.build(recipe, out=tmp_path / "run")
    plan = json.loads((run / "plan.json").read_text())
    assert plan["reports"]["model.weights"]["adapted"][0]["grid"] == "14x14 -> 4x4 (+1 prefix token)"
    # the export records the pretraining preprocessing, and the card names the hub id
    from recipec.provenance import read_export_metadata
    from recipec.weights import formats

    _, provenance = read_export_metadata(formats.read_metadata(run / "model.safetensors"))
    assert provenance["base_model"]["weights"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert provenance["base_model"]["preprocessing"]["crop_pct"] == 0.9
    assert provenance["normalization"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    card = (run / "README.md").read_text()
    assert 'base_model: "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"' in card
    assert "- **Pretraining input:** 3x224x224, bicubic resize, crop_pct 0.9" in card
    loaded = recipec.load(run / "model.safetensors")
    assert torch.equal(loaded.pos_embed, resample_abs_pos_embed(state["pos_embed"], [4, 4]))  # frozen: as resampled


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "layer"), [
    ("convnext_atto", {}, "stages.3"), ("vit_tiny_patch16_224", {"img_size": 32}, "blocks.11")])
def test_onnx_features_and_convert_of_a_timm_export(tmp_path, name, kwargs, layer):
    from recipec.cli import main
    from recipec.pipeline.outputs import export_model
    from recipec.weights import formats

    recipe = _timm_recipe(tmp_path, name, kwargs, "model.head.num_classes=10", "data.image_size=32",
                          "data.per_class=2", "data.val_fraction=0.02")
    compiled = compile_recipe(recipe)
    run = tmp_path / "run"
    run.mkdir()
    export_model(recipe, compiled.model, run, dump_recipe(recipe), {})
    for args in (["convert", str(run / "model.safetensors"), str(tmp_path / "m.onnx")],   # verified by onnxruntime
                 ["convert", str(run / "model.safetensors"), str(tmp_path / "m.pt"), "--dtype", "bfloat16"],
                 ["features", str(run / "model.safetensors"), "--layers", layer, "--out", str(tmp_path / "f.safetensors")]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0, args
    features = formats.load(tmp_path / "f.safetensors").state_dict
    assert any(key.startswith(layer) for key in features), sorted(features)
    assert recipec.load(tmp_path / "m.pt").state_dict().keys() == compiled.model.state_dict().keys()


def test_source_checkpoint_into_a_timm_vit_at_another_size_and_one_channel(tmp_path):
    from timm.models import adapt_input_conv

    torch.manual_seed(3)
    state = timm.create_model("vit_tiny_patch16_224", num_classes=7).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "epoch=3.ckpt")
    compiled = compile_recipe(_recipe(tmp_path, f"""\
        name: t
        device: cpu
        model: {{arch: timm/vit_tiny_patch16_224, kwargs: {{img_size: 32}}, in_channels: 1, head: {{num_classes: 3}}}}
        source:
          checkpoint: {tmp_path / "epoch=3.ckpt"}
          rename: [['^model\\.', '']]
          exclude: ['^head\\.']
          adapt: [{{match: 'pos_embed$', rule: pos_embed}}, {{match: '^patch_embed\\.proj\\.weight$', rule: input_channels}}]
        """))
    report = compiled.reports["source"]
    assert [(a["key"], a["rule"], a.get("grid")) for a in report.adapted] == [
        ("patch_embed.proj.weight", "input_channels", None), ("pos_embed", "pos_embed", "14x14 -> 2x2 (+1 prefix token)")]
    assert not report.missing and sorted(report.new) == ["head.bias", "head.weight"]
    model = compiled.model
    assert torch.equal(model.patch_embed.proj.weight, adapt_input_conv(1, state["patch_embed.proj.weight"]))
    assert torch.equal(model.pos_embed, resample_abs_pos_embed(state["pos_embed"], [2, 2]))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_mlp_heads_replace_timm_classifiers_and_keep_timm_pooling(tmp_path):
    head = "{num_classes: 3, type: mlp, hidden: [16], activation: gelu, dropout: 0.2}"
    convnext = compile_recipe(_timm_recipe(tmp_path, "convnext_atto", {}, head=head))
    assert "head      head.fc: Linear(320 -> 1000)  ->  Sequential[Linear(320 -> 16), GELU, Dropout(0.2), Linear(16 -> 3)]" \
        in convnext.plan.text()
    assert convnext.model.head.global_pool.pool_type == "avg"   # timm's own pooling and norm stay
    assert convnext.groups[-1].params == ("head.norm.weight", "head.norm.bias", "head.fc.0.weight", "head.fc.0.bias",
                                          "head.fc.3.weight", "head.fc.3.bias")
    deit = compile_recipe(_timm_recipe(tmp_path, "deit_tiny_distilled_patch16_224", {"img_size": 32}, head=head))
    assert deit.head.aux_prefixes == ("head_dist.",)
    assert deit.plan.data["head"]["notes"] == [
        "distillation head head_dist: Linear(192 -> 1000)  ->  Sequential[Linear(192 -> 16), GELU, Dropout(0.2), "
        "Linear(16 -> 3)] (averaged with head's logits)"]
    assert "aux loss" not in deit.plan.text()
    assert {n for n in deit.groups[-1].params} == {n for n, _ in deit.model.named_parameters() if n.startswith("head")}
