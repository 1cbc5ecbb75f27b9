"""fuse, split and reshape in source.adapt, and a preset's rules beside the recipe's: tiny models, exact tensors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from recipec.errors import RecipecError, TransferError
from recipec.recipe.spec import AdaptSpec
from recipec.weights.fuse import fuse_tensors, split_tensor
from recipec.weights.transfer import TransferRules, apply_transfer

FUSE_QKV = {"fuse": [r"(.*)\.q\.(weight|bias)", r"\1.k.\2", r"\1.v.\2"], "into": r"\1.qkv.\2", "dim": 0}
SPLIT_QKV = {"split": r"(.*)\.qkv\.(weight|bias)", "into": [r"\1.q.\2", r"\1.k.\2", r"\1.v.\2"], "dim": 0}


class FusedAttention(nn.Module):
    """timm's layout: one qkv Linear per block (weight (3 * dim, dim))."""

    def __init__(self, dim: int = 4, blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"qkv": nn.Linear(dim, 3 * dim)}) for _ in range(blocks))


class SeparateAttention(nn.Module):
    """Hugging Face's layout: q, k and v Linears per block."""

    def __init__(self, dim: int = 4, blocks: int = 2, kv: int | None = None) -> None:
        super().__init__()
        kv = dim if kv is None else kv
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"q": nn.Linear(dim, dim), "k": nn.Linear(dim, kv), "v": nn.Linear(dim, kv)})
            for _ in range(blocks))


class PointwiseConv(nn.Module):
    """A 1x1 convolution where the source has a Linear (timm's ConvNeXt conv_mlp)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(4, 6, 1)


def random_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}


def test_fuse_concatenates_the_parts_in_the_order_written_and_reports_them() -> None:
    source = random_state(SeparateAttention())
    model = FusedAttention()
    report = apply_transfer(model, source, TransferRules(adapt=[FUSE_QKV]))
    for i in range(2):
        parts = [source[f"blocks.{i}.{p}.weight"] for p in "qkv"]
        assert torch.equal(model.blocks[i]["qkv"].weight, torch.cat(parts))
    assert sorted(report.loaded) == sorted(model.state_dict())
    entry = next(a for a in report.adapted if a["key"] == "blocks.1.qkv.weight")
    assert entry == {"key": "blocks.1.qkv.weight", "rule": "fuse", "source_shape": [12, 4], "model_shape": [12, 4],
                     "source_keys": ["blocks.1.q.weight", "blocks.1.k.weight", "blocks.1.v.weight"],
                     "source_shapes": [[4, 4], [4, 4], [4, 4]], "dim": 0}
    assert report.fate("blocks.1.qkv.weight") == (
        "adapted by fuse [4,4] + [4,4] + [4,4] -> [12,4] along dim 0 from "
        "'blocks.1.q.weight', 'blocks.1.k.weight', 'blocks.1.v.weight'")
    assert report.fate("blocks.0.k.bias") == "fused into 'blocks.0.qkv.bias'"
    assert report.renamed == {} and len(report.adapted) == 4
    assert json.loads(json.dumps(report.to_dict()))["adapted"][0]["source_shapes"] == [[4], [4], [4]]


def test_the_order_of_the_parts_is_the_order_of_the_result() -> None:
    source = random_state(SeparateAttention())
    model = FusedAttention()
    rule = {**FUSE_QKV, "fuse": [r"(.*)\.k\.(weight|bias)", r"\1.q.\2", r"\1.v.\2"]}
    apply_transfer(model, source, TransferRules(adapt=[rule]))
    assert torch.equal(model.blocks[0]["qkv"].bias, torch.cat([source[f"blocks.0.{p}.bias"] for p in "kqv"]))


def test_split_is_the_reverse_of_fuse_with_equal_parts_or_sizes() -> None:
    fused = random_state(FusedAttention())
    model = SeparateAttention()
    report = apply_transfer(model, fused, TransferRules(adapt=[SPLIT_QKV]))
    q, k, v = fused["blocks.0.qkv.weight"].split(4)
    assert [torch.equal(model.blocks[0][n].weight, t) for n, t in zip("qkv", (q, k, v))] == [True] * 3
    assert report.fate("blocks.0.k.weight") == ("adapted by split [12,4] -> [4,4] along dim 0 (part 2 of 3) from "
                                                "'blocks.0.qkv.weight'")
    assert report.fate("blocks.0.qkv.weight") == ("split into 'blocks.0.q.weight', 'blocks.0.k.weight', "
                                                  "'blocks.0.v.weight'")
    # grouped-query attention: k and v narrower than q
    narrow = SeparateAttention(kv=2)
    source = {f"blocks.{i}.qkv.{p}": torch.randn(8, 4) if p == "weight" else torch.randn(8)
              for i in range(2) for p in ("weight", "bias")}
    apply_transfer(narrow, source, TransferRules(adapt=[{**SPLIT_QKV, "sizes": [4, 2, 2]}]))
    assert torch.equal(narrow.blocks[1]["k"].weight, source["blocks.1.qkv.weight"][4:6])


def test_fuse_and_split_round_trip_exactly() -> None:
    parts = [torch.randn(3, 5), torch.randn(2, 5), torch.randn(4, 5)]
    fused = fuse_tensors(parts, 0)
    assert all(torch.equal(a, b) for a, b in zip(split_tensor(fused, 3, 0, [3, 2, 4]), parts))
    assert torch.equal(fuse_tensors([torch.ones(2, 3), torch.zeros(2, 1)], -1), torch.tensor([[1., 1, 1, 0]] * 2))


@pytest.mark.parametrize(("rule", "source", "problem"), [
    # a part the fuse needs is not there
    (FUSE_QKV, {"blocks.0.q.weight": (4, 4), "blocks.0.k.weight": (4, 4)},
     "fuse into 'blocks.0.qkv.weight': part 'blocks.0.v.weight' (with 'blocks.0.q.weight') is not among the renamed "
     "source keys; rename a source key onto it (source.rename) or fix the template"),
    # parts that disagree off the fuse dimension
    (FUSE_QKV, {"blocks.0.q.weight": (4, 4), "blocks.0.k.weight": (4, 3), "blocks.0.v.weight": (4, 4)},
     "'blocks.0.qkv.weight' (source 'blocks.0.q.weight' + 'blocks.0.k.weight' + 'blocks.0.v.weight'): fuse along "
     "dim 0: the parts must agree on every other dim, got [4,4] + [4,3] + [4,4]"),
    # the fused tensor does not fit the model
    ({**FUSE_QKV, "dim": 1}, {"blocks.0.q.weight": (4, 4), "blocks.0.k.weight": (4, 4), "blocks.0.v.weight": (4, 4)},
     "'blocks.0.qkv.weight' (source 'blocks.0.q.weight' + 'blocks.0.k.weight' + 'blocks.0.v.weight'): fuse makes "
     "[4,12], the model has [12,4]; check the parts, dim and sizes"),
    # a pattern that matches no whole key
    ({**FUSE_QKV, "fuse": [r"q\.weight", r"k.weight"], "into": "qkv.weight"}, {"blocks.0.q.weight": (4, 4)},
     r"fuse pattern 'q\.weight' matched no renamed key (it must match the whole key); renamed keys look like: "
     "blocks.0.q.weight"),
    # a split that equal parts cannot make
    (SPLIT_QKV, {"blocks.0.qkv.weight": (10, 4)},
     "'blocks.0.q.weight' (source 'blocks.0.qkv.weight'): split into 3 equal parts along dim 0, but the source "
     "[10,4] has 10 there; give sizes"),
    (SPLIT_QKV, {"blocks.0.qkv.weight": (12, 4), "blocks.0.q.weight": (4, 4)},
     "'blocks.0.q.weight' is made by this rule but is a renamed source key too; exclude one of them (source.exclude)"),
    ({"match": r"fc1\.weight$", "rule": "reshape"}, {"fc1.weight": (6, 5), "fc1.bias": (6,)},
     "'fc1.weight': reshape keeps the element count, but source [6,5] has 30 elements and the model's [6,4,1,1] 24"),
])
def test_a_rule_that_cannot_do_its_work_is_located_at_the_rule_and_nothing_is_copied(rule, source, problem) -> None:
    model = PointwiseConv() if "match" in rule else (SeparateAttention(blocks=1) if "split" in rule
                                                     else FusedAttention(blocks=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransferError) as info:
        apply_transfer(model, {k: torch.ones(s) for k, s in source.items()},
                       TransferRules(adapt=[rule], require_all=False))
    assert (("adapt", 0), problem) in list(zip(info.value.paths, info.value.messages)), info.value.problems
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_reshape_loads_a_linear_into_a_1x1_conv_and_says_so() -> None:
    linear = nn.Linear(4, 6)
    model = PointwiseConv()
    report = apply_transfer(model, {"fc1.weight": linear.weight.detach(), "fc1.bias": linear.bias.detach()},
                            TransferRules(adapt=[AdaptSpec(match=r"\.weight$", rule="reshape")]))
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(model.fc1(x), linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-6)
    assert report.adapted == [{"key": "fc1.weight", "rule": "reshape", "source_shape": [6, 4], "model_shape": [6, 4, 1, 1]}]


def test_a_fused_tensor_can_be_reshaped_after_and_the_report_says_both() -> None:
    source = {f"blocks.0.{p}.{w}": torch.randn(4 if w == "bias" else (4, 4)) for p in "qkv" for w in ("weight", "bias")}
    conv = nn.Module()
    conv.blocks = nn.ModuleList([nn.ModuleDict({"qkv": nn.Conv2d(4, 12, 1)})])
    report = apply_transfer(conv, source, TransferRules(adapt=[FUSE_QKV, {"match": "qkv", "rule": "reshape"}]))
    assert [a["rule"] for a in report.adapted] == ["fuse", "fuse+reshape"]
    assert torch.equal(conv.blocks[0]["qkv"].weight.flatten(1), torch.cat([source[f"blocks.0.{p}.weight"] for p in "qkv"]))


def test_adapt_spec_objects_work_like_dicts() -> None:
    source = random_state(SeparateAttention())
    a, b = FusedAttention(), FusedAttention()
    apply_transfer(a, source, TransferRules(adapt=[AdaptSpec(**FUSE_QKV)]))
    apply_transfer(b, source, TransferRules(adapt=[FUSE_QKV]))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# --------------------------------------------------------------------------- presets beside the recipe's rules


class HFStyle(nn.Module):
    """Keys as the hf_vit_to_timm preset renames them, in a model small enough to read."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.blocks = nn.ModuleList([nn.ModuleDict({"attn": nn.ModuleDict({"qkv": nn.Linear(4, 12)})})])
        self.head = nn.Linear(4, 2)


def hf_source() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    keys = {"vit.embeddings.cls_token": (1, 1, 4), "vit.pooler.dense.weight": (4, 4), "classifier.weight": (2, 4),
            "classifier.bias": (2,)}
    keys |= {f"vit.encoder.layer.0.attention.attention.{p}.{w}": (4, 4) if w == "weight" else (4,)
             for p in ("query", "key", "value") for w in ("weight", "bias")}
    return {k: torch.randn(s, generator=generator) for k, s in keys.items()}


def test_a_preset_maps_before_the_recipe_rules_and_its_unused_rules_are_no_error() -> None:
    source = hf_source()
    model = HFStyle()
    report = apply_transfer(model, source, TransferRules(preset="hf_vit_to_timm", exclude=[r"^head\."],
                                                         require_all=False))
    assert torch.equal(model.blocks[0]["attn"]["qkv"].weight, torch.cat(
        [source[f"vit.encoder.layer.0.attention.attention.{p}.weight"] for p in ("query", "key", "value")]))
    assert report.renamed == {"cls_token": "vit.embeddings.cls_token"}
    assert {(e["key"], e["pattern"]) for e in report.excluded} == {
        ("vit.pooler.dense.weight", r"^pooler\."), ("classifier.weight", r"^head\."), ("classifier.bias", r"^head\.")}
    assert report.missing == ["head.bias", "head.weight"]


def test_the_recipe_rules_keep_their_own_indices_beside_a_preset() -> None:
    with pytest.raises(TransferError) as info:
        apply_transfer(HFStyle(), hf_source(), TransferRules(
            preset="hf_vit_to_timm", rename=[(r"^head\.", "head."), ("^nothing", "")], exclude=["^zzz"],
            adapt=[{"match": "^nope$", "rule": "reshape"}], require_all=False))
    assert info.value.paths == [("rename", 1), ("exclude", 0), ("adapt", 0)]
    assert info.value.messages[0].startswith("pattern '^nothing' matched no source key after the rename rules before it")
    with pytest.raises(TransferError) as info:
        apply_transfer(HFStyle(), hf_source(), TransferRules(preset="hf_vit_to_timm", rename=[("(", "")]))
    assert info.value.paths == [("rename", 0)]


def test_a_preset_that_renames_nothing_is_the_wrong_preset() -> None:
    with pytest.raises(TransferError) as info:
        apply_transfer(HFStyle(), {"cls_token": torch.zeros(1, 1, 4)}, TransferRules(preset="hf_convnext_to_timm",
                                                                                   require_all=False))
    assert info.value.paths == [("preset",)]
    assert info.value.messages[0] == (
        "hf_convnext_to_timm renames none of the source keys: it reads Hugging Face ConvNeXt (ConvNextModel, "
        "ConvNextForImageClassification), but source keys look like: cls_token")
    with pytest.raises(TransferError, match="unknown preset 'vit'; choose one of: hf_vit_to_timm, ") as info:
        apply_transfer(HFStyle(), {}, TransferRules(preset="vit"))
    assert info.value.paths == [("preset",)]


def test_the_compiler_locates_preset_and_fuse_problems_in_the_source_section() -> None:
    from recipec.compiler.compile import _transfer

    with pytest.raises(TransferError) as info:
        _transfer(apply_transfer, ("source",), FusedAttention(), {"blocks.0.q.weight": torch.zeros(4, 4)},
                  TransferRules(adapt=[FUSE_QKV], preset="hf_dinov2_to_timm"))
    assert info.value.paths[:2] == [("source", "preset"), ("source", "adapt", 0)]


KEY = st.text(alphabet="abqkv.0", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(KEY, max_size=6, unique=True), first=st.text(alphabet="abqkv.()*0\\", max_size=6),
       templates=st.lists(st.text(alphabet="abqkv.\\12", max_size=5), min_size=2, max_size=3),
       split=st.booleans(), dim=st.integers(-3, 3))
def test_random_fuse_and_split_rules_give_a_report_or_a_recipec_error(keys, first, templates, split, dim) -> None:
    rule = ({"split": first, "into": templates, "dim": dim} if split
            else {"fuse": [first, *templates[1:]], "into": templates[0], "dim": dim})
    source = {k: torch.ones(2, 2) for k in keys}
    try:
        apply_transfer(nn.Linear(2, 2), source, TransferRules(adapt=[rule], require_all=False, on_mismatch="skip"))
    except RecipecError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
