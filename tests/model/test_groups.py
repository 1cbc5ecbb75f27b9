from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torchvision
from torch import nn

from recipec.errors import GroupError
from recipec.model.families import preset_groups
from recipec.model.groups import LayerGroup, assign_groups, param_to_group

# torchvision's own classifier of each family (the new head replaces it at the same path)
_HEADS = {
    "resnet": "fc.", "resnext": "fc.", "wide_resnet": "fc.", "regnet": "fc.", "googlenet": "fc.", "inception": "fc.",
    "shufflenet": "fc.", "vgg": "classifier.6.", "alexnet": "classifier.6.", "vit": "heads.head.", "swin": "head.",
    "convnext": "classifier.2.", "mobilenet_v2": "classifier.1.", "mobilenet_v3": "classifier.3.",
    "efficientnet": "classifier.1.", "mnasnet": "classifier.1.", "densenet": "classifier.",
    "squeezenet": "classifier.1.", "maxvit": "classifier.5.",
}
_ALL = torchvision.models.list_models(module=torchvision.models)


def _head_of(arch: str) -> str:
    return next(head for family, head in sorted(_HEADS.items(), key=lambda kv: -len(kv[0])) if arch.startswith(family))


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """For models whose constructor computes on tensors (regnet) and so cannot run under torch.device("meta")."""
    register = nn.Module.register_parameter

    def to_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


@functools.cache
def _meta_model(arch: str) -> nn.Module:
    """Shared between tests: nothing here modifies a model it did not build itself."""
    return _empty_model(arch)


def _empty_model(arch: str, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(arch, weights=None, **kwargs)
        except NotImplementedError:
            with _parameters_on_meta():
                return torchvision.models.get_model(arch, weights=None, **kwargs)


def _names(groups: list[LayerGroup]) -> list[str]:
    return [g.name for g in groups]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 2)


@pytest.mark.parametrize("arch", _ALL)
def test_every_torchvision_preset_partitions_its_model(arch: str) -> None:
    model = _meta_model(arch)
    head = _head_of(arch)
    groups = assign_groups(model, preset_groups(arch, model, head), head_prefix=head)
    assert len(groups) >= 4 and groups[-1].name == "head"
    assert set(groups[-1].params) == {n for n, _ in model.named_parameters() if n.startswith(head)}
    assert sum(g.numel for g in groups) == sum(p.numel() for p in model.parameters())


def test_resnet18_preset_is_exact() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    preset = preset_groups("resnet18", model, "fc.")
    assert preset == [("stem", [r"^conv1\.", r"^bn1\."]), ("layer1", [r"^layer1\."]), ("layer2", [r"^layer2\."]),
                      ("layer3", [r"^layer3\."]), ("layer4", [r"^layer4\."]), ("head", [r"^fc\."])]
    groups = assign_groups(model, preset, head_prefix="fc.")
    assert groups[0] == LayerGroup("stem", ("conv1.weight", "bn1.weight", "bn1.bias"), 64 * 3 * 7 * 7 + 2 * 64)
    assert groups[-1] == LayerGroup("head", ("fc.weight", "fc.bias"), 512 * 5 + 5)
    assert [p for g in groups for p in g.params] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize(("arch", "expected"), [
    ("vgg11", ["block1", "block2", "block3", "block4", "block5", "classifier", "head"]),
    ("alexnet", ["block1", "block2", "block3", "classifier", "head"]),
    ("vit_b_16", ["embeddings", "blocks_0_2", "blocks_3_5", "blocks_6_8", "blocks_9_11", "head"]),
    ("vit_l_16", ["embeddings", "blocks_0_5", "blocks_6_11", "blocks_12_17", "blocks_18_23", "head"]),
    ("swin_t", ["stem", "stage1", "stage2", "stage3", "stage4", "head"]),
    ("convnext_tiny", ["stem", "stage1", "stage2", "stage3", "stage4", "head"]),
    ("mobilenet_v2", ["stem", "blocks_1_5", "blocks_6_9", "blocks_10_13", "blocks_14_17", "last_conv", "head"]),
    ("mobilenet_v3_small", ["stem", "blocks_1_3", "blocks_4_6", "blocks_7_9", "blocks_10_11", "last_conv",
                            "classifier", "head"]),
    ("efficientnet_b0", ["stem", "blocks_1_2", "blocks_3_4", "blocks_5_6", "blocks_7", "last_conv", "head"]),
    ("mnasnet0_5", ["stem", "blocks_8_9", "blocks_10_11", "blocks_12", "blocks_13", "last_conv", "head"]),
    ("densenet121", ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4", "head"]),
    ("regnet_y_400mf", ["stem", "block1", "block2", "block3", "block4", "head"]),
    ("googlenet", ["stem", "inception3", "inception4", "inception5", "aux", "head"]),
    ("inception_v3", ["stem", "mixed5", "mixed6", "mixed7", "aux", "head"]),
    ("shufflenet_v2_x0_5", ["stem", "stage2", "stage3", "stage4", "last_conv", "head"]),
    ("squeezenet1_1", ["block1", "block2", "block3", "block4", "head"]),
    ("maxvit_t", ["stem", "stage1", "stage2", "stage3", "stage4", "classifier", "head"]),
])
def test_family_group_names(arch: str, expected: list[str]) -> None:
    model = _meta_model(arch)
    assert [name for name, _ in preset_groups(arch, model, _head_of(arch))] == expected


def test_final_norms_join_the_last_stage() -> None:
    vit = _meta_model("vit_b_16")
    owner = param_to_group(assign_groups(vit, preset_groups("vit_b_16", vit, "heads.head.")))
    assert owner["encoder.ln.weight"] == "blocks_9_11"
    assert owner["class_token"] == owner["encoder.pos_embedding"] == owner["conv_proj.weight"] == "embeddings"
    convnext = _meta_model("convnext_tiny")
    owner = param_to_group(assign_groups(convnext, preset_groups("convnext_tiny", convnext, "classifier.2.")))
    assert owner["classifier.0.weight"] == "stage4"
    densenet = _meta_model("densenet121")
    owner = param_to_group(assign_groups(densenet, preset_groups("densenet121", densenet, "classifier.")))
    assert owner["features.norm5.weight"] == "denseblock4"
    assert owner["features.transition1.conv.weight"] == "denseblock1"


def test_head_nested_in_a_preset_group_is_taken_out_of_it() -> None:
    model = _meta_model("vgg11")
    preset = dict(preset_groups("vgg11", model, "classifier.6."))
    assert preset["classifier"] == [r"^classifier\.(?:0|3)\."]
    assert preset["head"] == [r"^classifier\.6\."]
    # a replaced whole classifier: the classifier group disappears instead of matching nothing
    whole = preset_groups("vgg11", model, "classifier.")
    assert [name for name, _ in whole][-2:] == ["block5", "head"]
    assign_groups(model, whole, head_prefix="classifier.")


def test_groups_follow_model_variants() -> None:
    no_aux = _empty_model("googlenet", aux_logits=False, init_weights=False)
    assert "aux" not in [name for name, _ in preset_groups("googlenet", no_aux, "fc.")]
    mlp_head = torchvision.models.resnet18(weights=None)
    mlp_head.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 3))
    groups = assign_groups(mlp_head, preset_groups("resnet18", mlp_head, "fc"), head_prefix="fc.")
    assert groups[-1].params == ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias")


def test_unknown_architecture_gets_body_and_head() -> None:
    model = TinyNet()
    preset = preset_groups("mypackage.nets:make_net", model, "fc.")
    assert preset == [("body", [r"^(?!fc\.)"]), ("head", [r"^fc\."])]
    body, head = assign_groups(model, preset, head_prefix="fc.")
    assert body.params == ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "block.0.weight", "block.0.bias",
                           "block.1.weight", "block.1.bias")
    assert head.params == ("fc.weight", "fc.bias")


def test_head_prefix_that_matches_nothing() -> None:
    with pytest.raises(GroupError, match=r"head prefix 'classifier\.'"):
        preset_groups("resnet18", TinyNet(), "classifier.")


def test_frozen_parameters_are_assigned_too() -> None:
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    body, _ = assign_groups(model, [("body", [r"^(?!fc\.)"]), ("head", [r"^fc\."])])
    assert "conv.weight" in body.params


def test_parameter_in_two_groups_is_an_error_naming_both() -> None:
    groups = [("stem", [r"^conv\.", r"^bn\."]), ("body", [r"^(?!fc\.)"]), ("head", [r"^fc\."])]
    with pytest.raises(GroupError) as info:
        assign_groups(TinyNet(), groups, from_recipe=True)
    (problem,) = info.value.problems
    assert problem.startswith("groups: 4 parameter(s) matched by groups 'stem' and 'body': conv.weight, conv.bias, "
                              "bn.weight, bn.bias; a parameter must be in exactly one group")
    assert info.value.paths == [("groups",)]


def test_unassigned_parameters_are_listed_up_to_twenty() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(15)])  # 30 parameters
    with pytest.raises(GroupError) as info:
        assign_groups(model, [("head", [r"^14\."])])
    (problem,) = info.value.problems
    assert problem.startswith("28 parameter(s) in no group: 0.weight, 0.bias, ")
    assert "9.bias (+8 more); add a group or widen a regex" in problem
    assert info.value.paths == [None]


def test_dead_group_and_dead_regex_are_errors_at_their_recipe_path() -> None:
    groups = [("stem", [r"^conv\.", r"^bn\."]), ("typo", [r"^blok\."]), ("block", [r"^block\.", r"^blocks\."]),
              ("head", [r"^fc\."])]
    with pytest.raises(GroupError) as info:
        assign_groups(TinyNet(), groups, from_recipe=True)
    assert info.value.paths == [("groups", 1, "match"), ("groups", 2, "match", 1)]
    assert "group 'typo' matches no parameter" in info.value.problems[0]
    assert "regex '^blocks\\\\.' of group 'block' matches no parameter" in info.value.problems[1]


def test_head_must_be_in_the_last_group() -> None:
    groups = [("head", [r"^fc\."]), ("body", [r"^(?!fc\.)"])]
    with pytest.raises(GroupError, match=r"group 'head' holds parameters of the new head \(fc.weight, fc.bias\); "
                                         r"the head must be in the last group \('body'\)") as info:
        assign_groups(TinyNet(), groups, head_prefix="fc.", from_recipe=True)
    assert info.value.paths == [("groups", 0, "match")]


def test_invalid_regex_and_duplicate_name() -> None:
    groups = [("body", [r"^(?!fc\."]), ("body", [r"^fc\."])]
    with pytest.raises(GroupError) as info:
        assign_groups(TinyNet(), groups, from_recipe=True)
    assert ("groups", 1, "name") in info.value.paths
    assert ("groups", 0, "match", 0) in info.value.paths
    assert any(re.search("not a valid regular expression", p) for p in info.value.problems)
