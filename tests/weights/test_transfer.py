"""Key mapping, filters, shape policy and the load report, on tiny models and resnet18."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from recipec.errors import TransferError
from recipec.recipe.spec import AdaptSpec
from recipec.weights.transfer import LoadReport, TransferRules, apply_transfer, map_keys


class ConvBNHead(nn.Module):
    """A stem conv, BatchNorm (with buffers) and a Linear head: every fate in ~300 parameters."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)


class StagedNet(nn.Module):
    """Stages of blocks (layer1.0, layer1.1, layer2.0, ...): two indices per key."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
        self.layer2 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))


class Wrapper(nn.Module):
    """What DDP (``module``) and a LightningModule (``model``) put around a network."""

    def __init__(self, attribute: str, inner: nn.Module) -> None:
        super().__init__()
        setattr(self, attribute, inner)


def source_of(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict of ``model``'s layout with values that differ from any fresh model."""
    generator = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + 7)
            for k, v in model.state_dict().items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


BN = ["bn1.bias", "bn1.num_batches_tracked", "bn1.running_mean", "bn1.running_var", "bn1.weight"]


# --------------------------------------------------------------------------- loading and copying


def test_same_layout_loads_every_key_with_its_values() -> None:
    model, source = ConvBNHead(), source_of(ConvBNHead())
    report = apply_transfer(model, source)
    assert report.loaded == sorted(source) and report.counts()["loaded"] == 8
    assert not (report.missing or report.unexpected or report.renamed or report.new or report.defaulted)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def test_tensors_are_copied_in_place_so_optimizer_references_stay_valid() -> None:
    model = ConvBNHead()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    params = dict(model.named_parameters())
    pointers = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    apply_transfer(model, source_of(ConvBNHead()))
    assert all(p is params[k] and p.requires_grad for k, p in model.named_parameters())
    assert {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()} == pointers
    assert optimizer.param_groups[0]["params"][0] is model.conv1.weight


def test_source_is_cast_to_the_model_dtype() -> None:
    model = ConvBNHead()
    source = {k: v.double() if v.is_floating_point() else v.int() for k, v in source_of(ConvBNHead()).items()}
    apply_transfer(model, source)
    assert model.conv1.weight.dtype == torch.float32 and model.bn1.num_batches_tracked.dtype == torch.int64
    assert torch.equal(model.conv1.weight, source["conv1.weight"].float())
    assert model.bn1.num_batches_tracked.item() == 7


def test_dry_run_reports_without_copying() -> None:
    model = ConvBNHead()
    before = snapshot(model)
    report = apply_transfer(model, source_of(ConvBNHead()), dry_run=True)
    assert report.loaded == sorted(before)
    assert_untouched(model, before)


# --------------------------------------------------------------------------- every fate, exactly


@pytest.fixture
def every_fate() -> tuple[ConvBNHead, dict[str, torch.Tensor], LoadReport]:
    """A 1-channel model with a 2-class head and a bigger bn, from a DDP checkpoint of an RGB 4-class net."""
    model = ConvBNHead(in_channels=1, num_classes=2)
    model.bn1 = nn.BatchNorm2d(6)
    model.extra = nn.Linear(2, 2)  # type: ignore[assignment]
    source = {f"module.{k}": v for k, v in source_of(ConvBNHead()).items() if not k.endswith("num_batches_tracked")}
    source["module.aux.weight"] = torch.ones(3)
    source["module.fc.bias"] = torch.ones(4)
    report = apply_transfer(
        model, source, TransferRules(
            rename=[(r"^module\.", "")], exclude=[r"^fc\.bias$"],
            adapt=[{"match": r"^conv1\.", "rule": "input_channels"}, {"match": r"^fc\.", "rule": "class_subset", "indices": [3, 1]}],
            on_mismatch="skip", require_all=False),
        new_keys_prefixes=["extra."], source="ddp.pt", state_dict_key="state_dict")
    return model, source, report


def test_report_has_exact_key_sets_for_every_fate(every_fate: tuple[ConvBNHead, dict, LoadReport]) -> None:
    model, source, report = every_fate
    assert report.loaded == ["conv1.weight", "fc.weight"]
    assert report.adapted == [
        {"key": "conv1.weight", "rule": "input_channels", "source_shape": [8, 3, 3, 3], "model_shape": [8, 1, 3, 3]},
        {"key": "fc.weight", "rule": "class_subset", "source_shape": [4, 8], "model_shape": [2, 8]}]
    assert report.renamed == {"conv1.weight": "module.conv1.weight", "fc.weight": "module.fc.weight"}
    assert [m["key"] for m in report.mismatched] == ["bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight"]
    assert report.mismatched[0] == {"key": "bn1.bias", "source_key": "module.bn1.bias", "source_shape": [8], "model_shape": [6]}
    assert report.excluded == [{"key": "module.fc.bias", "renamed": "fc.bias", "pattern": r"^fc\.bias$", "by": "exclude"}]
    assert report.unexpected == ["aux.weight"] and report.unexpected_sources == {"aux.weight": "module.aux.weight"}
    assert report.missing == ["fc.bias"]
    assert report.new == ["extra.bias", "extra.weight"]
    assert report.defaulted == ["bn1.num_batches_tracked"]
    assert (report.source, report.state_dict_key) == ("ddp.pt", "state_dict")
    assert report.counts() == {"loaded": 2, "adapted": 2, "renamed": 2, "mismatched": 4, "missing": 1, "new": 2,
                               "defaulted": 1, "excluded": 1, "unexpected": 1}
    torch.testing.assert_close(model.fc.weight, source["module.fc.weight"][[3, 1]])
    torch.testing.assert_close(model.conv1.weight, source["module.conv1.weight"].sum(1, keepdim=True))


def test_fate_gives_one_line_for_any_source_or_model_key(every_fate: tuple[ConvBNHead, dict, LoadReport]) -> None:
    report = every_fate[2]
    assert report.fate("conv1.weight") == "adapted by input_channels [8,3,3,3] -> [8,1,3,3] from 'module.conv1.weight'"
    assert report.fate("module.conv1.weight") == "adapted into 'conv1.weight' (renamed)"
    assert report.fate("bn1.weight") == "shape mismatch: source [8] vs model [6] (skipped)"
    assert report.fate("module.bn1.weight") == "shape mismatch: source [8] vs model [6] (skipped)"
    assert report.fate("module.fc.bias") == r"excluded by '^fc\.bias$'"
    assert report.fate("fc.bias") == r"missing: source 'module.fc.bias' excluded by '^fc\.bias$'"
    assert report.fate("aux.weight") == report.fate("module.aux.weight") == "unexpected: not in model"
    assert report.fate("extra.weight") == "new head: initialised fresh"
    assert report.fate("bn1.num_batches_tracked") == "defaulted: not in source, keeps its current value"
    with pytest.raises(KeyError, match="neither a source key nor a model key"):
        report.fate("nope")


def test_fate_of_plain_loads_and_renames() -> None:
    report = apply_transfer(ConvBNHead(), {f"module.{k}": v for k, v in source_of(ConvBNHead()).items()},
                            TransferRules(rename=[(r"^module\.", "")]))
    assert report.fate("conv1.weight") == "loaded from 'module.conv1.weight' (renamed)"
    assert report.fate("module.conv1.weight") == "loaded into 'conv1.weight' (renamed)"
    assert apply_transfer(ConvBNHead(), source_of(ConvBNHead())).fate("fc.weight") == "loaded"
    report = apply_transfer(ConvBNHead(), {k: v for k, v in source_of(ConvBNHead()).items() if k != "fc.bias"},
                            TransferRules(require_all=False))
    assert report.fate("fc.bias") == "missing: not in source"


def test_summary_and_table_are_compact_and_sorted(every_fate: tuple[ConvBNHead, dict, LoadReport]) -> None:
    report = every_fate[2]
    assert report.summary() == ("2 of 10 model tensors loaded from ddp.pt (2 adapted, 2 renamed); 2 new, 1 defaulted, "
                                "4 mismatched, 1 missing; 1 source tensors excluded, 1 unexpected")
    lines = report.table().splitlines()
    assert lines[0] == report.summary()
    rows = [line.split()[0] for line in lines[1:] if line.startswith("  ") and not line.split()[1].isdigit()]
    assert rows == ["conv1.weight", "fc.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight",
                    "fc.bias", "extra.bias", "extra.weight", "bn1.num_batches_tracked", "module.fc.bias", "aux.weight"]
    assert report.table() == report.table()
    short = report.table(limit=3).splitlines()
    assert short[-1] == "  ... and 9 more" and sum(1 for line in short if "bn1.bias" in line) == 1


def test_to_dict_is_json_serialisable_with_the_plan_contract_keys(every_fate: tuple[ConvBNHead, dict, LoadReport]) -> None:
    data = json.loads(json.dumps(every_fate[2].to_dict()))
    assert {"loaded", "missing", "unexpected", "mismatched", "excluded", "adapted", "renamed"} <= set(data)
    assert data["mismatched"][0]["source_shape"] == [8] and data["renamed"]["fc.weight"] == "module.fc.weight"
    assert data["excluded"][0]["by"] == "exclude"


# --------------------------------------------------------------------------- rename, include, exclude


def test_rename_chain_with_two_capture_groups() -> None:
    model = StagedNet()
    source = {re.sub(r"^layer(\d)\.(\d)\.", r"module.backbone.\1.\2.", k): v for k, v in source_of(StagedNet()).items()}
    report = apply_transfer(model, source, TransferRules(rename=[(r"^module\.", ""), (r"^backbone\.(\d+)\.(\d+)\.", r"layer\1.\2.")]))
    assert report.renamed == {k: f"module.backbone.{k[5]}.{k[7]}.{k[9:]}" for k in model.state_dict()}
    assert torch.equal(model.layer2[1].weight, source["module.backbone.2.1.weight"])


@pytest.mark.parametrize("wrap", ["module", "model", "compile"])
def test_wrapper_prefixes_of_ddp_lightning_and_torch_compile(wrap: str) -> None:
    inner = ConvBNHead()
    wrapped = torch.compile(inner) if wrap == "compile" else Wrapper(wrap, inner)
    prefix = {"module": "module.", "model": "model.", "compile": "_orig_mod."}[wrap]
    source = wrapped.state_dict()
    assert all(k.startswith(prefix) for k in source)
    model = ConvBNHead()
    report = apply_transfer(model, source, TransferRules(rename=[(f"^{re.escape(prefix)}", "")]))
    assert report.loaded == sorted(model.state_dict()) and len(report.renamed) == 8
    assert torch.equal(model.fc.weight, inner.fc.weight)


def test_include_keeps_only_matching_keys_and_exclude_wins() -> None:
    model = ConvBNHead(num_classes=9)
    report = apply_transfer(model, source_of(ConvBNHead()), TransferRules(
        include=[r"^conv1\.", r"^bn1\.", r"^fc\."], exclude=[r"^fc\.", r"\.bias$"], require_all=False),
        new_keys_prefixes=["fc."])
    assert report.excluded == [
        {"key": "bn1.bias", "renamed": "bn1.bias", "pattern": r"\.bias$", "by": "exclude"},
        {"key": "fc.bias", "renamed": "fc.bias", "pattern": r"^fc\.", "by": "exclude"},
        {"key": "fc.weight", "renamed": "fc.weight", "pattern": r"^fc\.", "by": "exclude"}]
    assert report.new == ["fc.bias", "fc.weight"] and report.missing == ["bn1.bias"]
    dropped = apply_transfer(ConvBNHead(), source_of(ConvBNHead()), TransferRules(include=[r"^conv1\.", r"^bn1\."]),
                             new_keys_prefixes=["fc."])
    assert [e["key"] for e in dropped.excluded if e["by"] == "include"] == ["fc.bias", "fc.weight"]
    assert dropped.fate("fc.bias") == "new head: initialised fresh"
    assert dropped.excluded[0]["pattern"] is None


@pytest.mark.parametrize(("field", "kwargs"), [
    ("rename", {"rename": [(r"^module\.", ""), (r"^modul\.", "")]}),
    ("include", {"include": [r"^conv1\.", r"^bn\."]}),
    ("exclude", {"exclude": [r"^fc\.", r"^head\."]}),
    ("adapt", {"adapt": [{"match": r"^fc\.", "rule": "truncate_pad"}, {"match": r"^conv0\.", "rule": "input_channels"}]}),
])
def test_a_pattern_that_matches_nothing_is_an_error_located_in_the_recipe(field: str, kwargs: dict) -> None:
    model = ConvBNHead()
    before = snapshot(model)
    source = {f"module.{k}": v for k, v in source_of(ConvBNHead()).items()} if field == "rename" else source_of(model)
    with pytest.raises(TransferError, match="matched no") as info:
        apply_transfer(model, source, TransferRules(require_all=False, **kwargs))
    assert info.value.paths == [(field, 1)]
    assert "look like: conv1.weight, bn1.weight, bn1.bias, ..." in info.value.problems[0]
    if field == "rename":
        assert info.value.problems[0].startswith(
            r"rename.1: pattern '^modul\.' matched no source key after the rename rules before it; "
            "at that point source keys look like: conv1.weight")
    assert_untouched(model, before)


def test_every_dead_pattern_is_reported_at_once() -> None:
    with pytest.raises(TransferError) as info:
        apply_transfer(ConvBNHead(), source_of(ConvBNHead()), TransferRules(
            rename=[("^x", "")], include=["^y"], exclude=["^z"], adapt=[AdaptSpec(match="^w", rule="truncate_pad")]))
    assert info.value.paths == [("rename", 0), ("include", 0), ("exclude", 0), ("adapt", 0)]
    assert "pattern '^x' matched no source key; source keys look like: conv1.weight" in str(info.value)


def test_two_source_keys_renamed_onto_one_name_is_an_error_naming_both() -> None:
    source = source_of(ConvBNHead())
    source["module.fc.bias"] = source["fc.bias"]
    with pytest.raises(TransferError, match="source keys 'fc.bias' and 'module.fc.bias' are all renamed to 'fc.bias'"):
        apply_transfer(ConvBNHead(), source, TransferRules(rename=[(r"^module\.", "")]))


def test_invalid_regex_and_replacement_are_located() -> None:
    with pytest.raises(TransferError) as info:
        map_keys(["a"], rename=[("(", ""), ("a", r"\2")], exclude=["[z"])
    assert info.value.paths == [("rename", 0), ("exclude", 0), ("rename", 1)]
    assert "invalid group reference" in str(info.value)


# --------------------------------------------------------------------------- shapes and adapt


def test_mismatch_error_lists_every_mismatch_with_both_shapes_and_the_fix() -> None:
    model = ConvBNHead(num_classes=2)
    before = snapshot(model)
    source = {f"module.{k}": v for k, v in source_of(ConvBNHead(in_channels=1)).items()}
    with pytest.raises(TransferError) as info:
        apply_transfer(model, source, TransferRules(rename=[(r"^module\.", "")]))
    assert info.value.problems == [
        f"'{key}' (source 'module.{key}'): shape mismatch, source {have} vs model {want}; add an adapt rule for it "
        "(source.adapt), exclude it (source.exclude), or set source.on_mismatch: skip"
        for key, have, want in [("conv1.weight", "[8,1,3,3]", "[8,3,3,3]"), ("fc.bias", "[4]", "[2]"),
                                ("fc.weight", "[4,8]", "[2,8]")]]
    assert_untouched(model, before)


def test_skip_leaves_mismatched_tensors_as_they_were() -> None:
    model = ConvBNHead(num_classes=2)
    head = model.fc.weight.detach().clone()
    report = apply_transfer(model, source_of(ConvBNHead()), TransferRules(on_mismatch="skip"), new_keys_prefixes=["fc."])
    assert [m["key"] for m in report.mismatched] == ["fc.bias", "fc.weight"] and not report.missing
    assert torch.equal(model.fc.weight, head)
    assert report.fate("fc.weight") == "shape mismatch: source [4,8] vs model [2,8] (skipped)"


@pytest.mark.parametrize("in_channels", [1, 4])
def test_input_channels_through_apply_transfer(in_channels: int) -> None:
    model, source = ConvBNHead(in_channels=in_channels), source_of(ConvBNHead())
    report = apply_transfer(model, source, TransferRules(adapt=[AdaptSpec(match=r"^conv1\.weight$", rule="input_channels")]))
    weight = source["conv1.weight"]
    expected = weight.sum(1, keepdim=True) if in_channels == 1 else torch.cat([weight, weight[:, :1]], 1) * 0.75
    torch.testing.assert_close(model.conv1.weight, expected)
    assert report.adapted == [{"key": "conv1.weight", "rule": "input_channels", "source_shape": [8, 3, 3, 3],
                               "model_shape": [8, in_channels, 3, 3]}]
    assert report.fate("conv1.weight") == f"adapted by input_channels [8,3,3,3] -> [8,{in_channels},3,3]"


def test_truncate_pad_and_class_subset_through_apply_transfer() -> None:
    source = source_of(ConvBNHead(num_classes=10))
    padded = ConvBNHead(num_classes=12)
    apply_transfer(padded, source, TransferRules(adapt=[{"match": r"^fc\.", "rule": "truncate_pad"}]))
    assert torch.equal(padded.fc.weight[:10], source["fc.weight"]) and padded.fc.weight[10:].abs().sum() == 0
    subset = ConvBNHead(num_classes=3)
    apply_transfer(subset, source, TransferRules(adapt=[{"match": r"^fc\.", "rule": "class_subset", "indices": [9, 0, 4]}]))
    assert torch.equal(subset.fc.bias, source["fc.bias"][[9, 0, 4]])


def test_adapt_rule_is_not_used_when_shapes_already_agree() -> None:
    report = apply_transfer(ConvBNHead(), source_of(ConvBNHead()), TransferRules(adapt=[{"match": r"^fc\.", "rule": "truncate_pad"}]))
    assert report.adapted == [] and report.fate("fc.weight") == "loaded"


def test_an_adapt_rule_that_cannot_produce_the_shape_is_located() -> None:
    model = ConvBNHead(num_classes=3)
    before = snapshot(model)
    with pytest.raises(TransferError, match=r"'fc.weight': class_subset keeps 2 classes but the model has 3") as info:
        apply_transfer(model, source_of(ConvBNHead()),
                       TransferRules(adapt=[{"match": r"^fc\.", "rule": "class_subset", "indices": [0, 1]}]))
    assert info.value.paths == [("adapt", 0), ("adapt", 0)]
    assert_untouched(model, before)


# --------------------------------------------------------------------------- require_all and buffers


@pytest.fixture(scope="module")
def resnet_source() -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in source_of(torchvision.models.resnet18(weights=None)).items()}


def test_resnet18_from_a_ddp_checkpoint_into_a_new_head(resnet_source: dict[str, torch.Tensor]) -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    report = apply_transfer(model, resnet_source, TransferRules(rename=[(r"^module\.", "")], exclude=[r"^fc\."]),
                            new_keys_prefixes=["fc."])
    assert report.summary().startswith("120 of 122 model tensors loaded (0 adapted, 120 renamed); 2 new")
    assert report.new == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer4[1].bn2.running_var, resnet_source["module.layer4.1.bn2.running_var"])


def test_require_all_lists_missing_keys_twenty_at_most(resnet_source: dict[str, torch.Tensor]) -> None:
    model = torchvision.models.resnet18(weights=None)
    before = snapshot(model)
    with pytest.raises(TransferError) as info:
        apply_transfer(model, resnet_source, TransferRules(rename=[(r"^module\.", "")], exclude=[r"^layer4\."]))
    (message,) = info.value.problems
    assert info.value.paths == [("require_all",)]
    assert message.startswith("require_all: 25 model tensors get no weights from the source: "
                              "layer4.0.bn1.bias (source 'module.layer4.0.bn1.bias' excluded by '^layer4\\.'), ")
    assert message.count("excluded by") == 20 and ", ... and 5 more; " in message
    assert message.endswith("rename source keys onto them (source.rename) or set source.require_all: false")
    assert "num_batches_tracked" not in message  # defaulted, never missing
    assert_untouched(model, before)


def test_num_batches_tracked_the_source_lacks_is_defaulted_not_missing() -> None:
    model = ConvBNHead()
    model.bn1.num_batches_tracked.fill_(3)
    source = {k: v for k, v in source_of(ConvBNHead()).items() if not k.endswith("num_batches_tracked")}
    report = apply_transfer(model, source)
    assert report.defaulted == ["bn1.num_batches_tracked"] and report.missing == []
    assert model.bn1.num_batches_tracked.item() == 3


def test_unexpected_source_keys_are_reported_not_fatal() -> None:
    source = {**source_of(ConvBNHead()), "aux.weight": torch.zeros(1)}
    report = apply_transfer(ConvBNHead(), source)
    assert report.unexpected == ["aux.weight"] and report.unexpected_sources == {}


def test_non_tensor_entries_and_bad_on_mismatch_are_errors() -> None:
    with pytest.raises(TransferError, match="'fc.bias' is a int, not a tensor"):
        apply_transfer(ConvBNHead(), {**source_of(ConvBNHead()), "fc.bias": 3})
    with pytest.raises(TransferError, match="must be error or skip, got 'ignore'") as info:
        apply_transfer(ConvBNHead(), source_of(ConvBNHead()), TransferRules(on_mismatch="ignore"))
    assert info.value.paths == [("on_mismatch",)]


def test_the_compiler_relabels_rule_fields_as_the_recipe_source_section() -> None:
    from recipec.compiler.compile import _transfer

    with pytest.raises(TransferError) as info:
        _transfer(apply_transfer, ("source",), ConvBNHead(), source_of(ConvBNHead()), TransferRules(
            rename=[("^x", "")], include=["^y"], exclude=["^z"], adapt=[AdaptSpec(match="^w", rule="truncate_pad")]))
    assert info.value.paths == [("source", "rename", 0), ("source", "include", 0), ("source", "exclude", 0),
                                ("source", "adapt", 0)]
    assert info.value.problems[2] == ("source.exclude.0: pattern '^z' matched no renamed key; "
                                      "renamed keys look like: conv1.weight, bn1.weight, bn1.bias, ...")
    with pytest.raises(TransferError) as info:  # path-less problems go to the stage, rule fields to source.*
        _transfer(apply_transfer, ("model", "weights"), ConvBNHead(),
                  {**{k: v for k, v in source_of(ConvBNHead()).items() if k != "fc.weight"}, "fc.bias": 3})
    assert info.value.paths == [("model", "weights"), ("source", "require_all")]
    assert info.value.problems == [
        "model.weights: source entry 'fc.bias' is a int, not a tensor; exclude it",
        "source.require_all: 1 model tensors get no weights from the source: fc.weight; "
        "rename source keys onto them (source.rename) or set source.require_all: false"]


# --------------------------------------------------------------------------- map_keys against the obvious loop


def reference(keys: list[str], rename: list[tuple[str, str]], include: list[str], exclude: list[str]) -> tuple:
    """The straightforward implementation map_keys must agree with."""
    names, unmatched = list(keys), []
    for i, (pattern, replacement) in enumerate(rename):
        if not any(re.search(pattern, n) for n in names):
            unmatched.append(("rename", i, pattern))
        names = [re.sub(pattern, replacement, n) for n in names]
    unmatched += [(field, i, p) for field, patterns in (("include", include), ("exclude", exclude))
                  for i, p in enumerate(patterns) if not any(re.search(p, n) for n in names)]
    excluded = {}
    for key, name in zip(keys, names):
        first = next((p for p in exclude if re.search(p, name)), None)
        if first is not None:
            excluded[key] = ("exclude", first)
        elif include and not any(re.search(p, name) for p in include):
            excluded[key] = ("include", None)
    return dict(zip(keys, names)), excluded, unmatched


@pytest.mark.parametrize(("keys", "rename"), [
    (["a.x", "b.a.x", "a\nb.x", "a.x\n"], [(r"^a\.", "z."), (r"x$", "y"), (r"\.", "-")]),
    (["a\x00b", "ab", "b"], [("b", "\x00"), ("^a", "q"), ("\x00", "c")]),
    (["layer1.0.w", "layer10.2.w"], [(r"^layer(\d+)\.(\d)\.", r"blocks.\g<1>_\2."), ("w", r"\g<0>\g<0>")]),
    (["a.b", "a.c"], [(r"^a\.b$", "a.b"), ("(?i)A", "x"), ("c|b", r"\\"), (r"\.", "{0}")]),
    ([], [("a", "b")]),
])
def test_map_keys_fast_paths_agree_with_the_obvious_loop(keys: list[str], rename: list[tuple[str, str]]) -> None:
    mapping = map_keys(keys, rename=rename)
    assert (mapping.renamed, mapping.excluded, mapping.unmatched) == reference(keys, rename, [], [])


_FRAGMENTS = ["^", "$", r"\A", r"\Z", "a", "b", "0", r"\.", ".", "x", "|", "(a)", r"(\d+)", "[ab]", "a*", "(?:a|b)",
              "(?=b)", r"\b", "\n", "\x00", "(?P<n>b)"]
_pattern = st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=4).map("".join)
_replacement = st.sampled_from(["", "x", ".", r"\1", r"\g<0>", r"\g<n>", r"\2", r"\\", r"\n", "{}", "\x00", r"y\1z"])
_keys = st.lists(st.text(alphabet="ab0x.\n\x00", max_size=8), max_size=8, unique=True)


@settings(max_examples=300, deadline=None)
@given(keys=_keys, rename=st.lists(st.tuples(_pattern, _replacement), max_size=4),
       include=st.lists(_pattern, max_size=2), exclude=st.lists(_pattern, max_size=2))
def test_map_keys_returns_the_obvious_result_or_a_transfer_error(
        keys: list[str], rename: list[tuple[str, str]], include: list[str], exclude: list[str]) -> None:
    try:
        mapping = map_keys(keys, rename=rename, include=include, exclude=exclude)
    except TransferError as exc:
        assert all(path is not None and path[0] in ("rename", "include", "exclude") for path in exc.paths)
        return
    assert (mapping.renamed, mapping.excluded, mapping.unmatched) == reference(keys, rename, include, exclude)
    assert len(mapping.problems) == len(mapping.unmatched) + len(mapping.collisions)
