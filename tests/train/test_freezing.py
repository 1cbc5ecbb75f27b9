from __future__ import annotations

import pytest
import torch
from torch import nn

from recipec.errors import GroupError
from recipec.model.groups import LayerGroup, assign_groups
from recipec.train.freezing import (
    FreezeSchedule,
    apply_trainable,
    batchnorm_modes,
    compile_schedule,
    set_train_mode,
)
from recipec.train.optim import build_optimizer, build_param_groups

RESNET = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
SEED_UNFREEZE = {5: ["layer4"], 10: ["layer3"], 15: ["layer2"], 20: ["layer1"], 25: ["stem"]}


class ConvBNNet(nn.Module):
    """conv+BN stem, conv+BN block, linear head: the smallest net with BatchNorm in a frozen prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


def _groups(model: nn.Module) -> list[LayerGroup]:
    return assign_groups(model, [("stem", [r"^stem\."]), ("block", [r"^block\."]), ("head", [r"^head\."])])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_seed_schedule_equals_gradual_every_5_from_5() -> None:
    explicit = compile_schedule(RESNET, epochs=30, trainable=["head"], unfreeze=SEED_UNFREEZE)
    gradual = compile_schedule(RESNET, epochs=30, trainable=["head"], gradual_every=5, gradual_start=5)
    assert explicit == gradual
    assert explicit.trainable_at(0) == explicit.trainable_at(4) == ("head",)
    assert explicit.trainable_at(5) == ("layer4", "head")
    assert explicit.trainable_at(29) == tuple(RESNET)
    assert [explicit.unfrozen_at(e) for e in (0, 5, 6, 10, 25)] == [(), ("layer4",), (), ("layer3",), ("stem",)]
    assert explicit.table[12] == (False, False, False, True, True, True)


def test_trainable_none_is_full_fine_tuning() -> None:
    schedule = compile_schedule(["body", "head"], epochs=2, trainable=None)
    assert schedule.table == ((True, True), (True, True))


def test_gradual_and_explicit_unfreeze_combine() -> None:
    # epoch 1 unfreezes layer3 explicitly, then gradual takes the top frozen group each epoch from 1
    schedule = compile_schedule(["a", "b", "c", "head"], epochs=4, trainable=["head"], unfreeze={1: ["b"]},
                                gradual_every=1, gradual_start=1)
    assert [schedule.trainable_at(e) for e in range(4)] == [
        ("head",), ("b", "c", "head"), ("a", "b", "c", "head"), ("a", "b", "c", "head")]


def test_to_dict() -> None:
    schedule = compile_schedule(["body", "head"], epochs=3, trainable=["head"], unfreeze={2: ["body"]})
    assert schedule.to_dict() == {"epochs": 3, "groups": [{"name": "body", "trainable": [False, False, True]},
                                                          {"name": "head", "trainable": [True, True, True]}]}
    assert schedule == FreezeSchedule(("body", "head"), 3, ((False, True), (False, True), (True, True)))


def test_schedule_errors_carry_the_argument_names() -> None:
    with pytest.raises(GroupError) as info:
        compile_schedule(RESNET, epochs=10, trainable=["haed"], unfreeze={3: ["layer4", "layer5"], 10: ["layer3"]},
                         gradual_every=2, gradual_start=12)
    # the compiler relabels them freeze.trainable.0, freeze.unfreeze.3.1, ... (tests/test_compiler.py)
    assert info.value.paths == [("trainable", 0), ("unfreeze", 3, 1), ("unfreeze", 10), ("gradual_start",)]
    assert info.value.problems[0] == ("trainable.0: unknown group 'haed' "
                                      "(groups are stem, layer1, layer2, layer3, layer4, head)")
    assert "epoch 10 never starts (train.epochs is 10; epochs count from 0)" in info.value.problems[2]


def test_unfreezing_with_everything_trainable_is_an_error() -> None:
    with pytest.raises(GroupError, match=r"^trainable: is null, so every group trains"):
        compile_schedule(RESNET, epochs=10, trainable=None, unfreeze={5: ["layer4"]})


def test_apply_trainable_sets_requires_grad_and_drops_grads() -> None:
    model = ConvBNNet()
    groups = _groups(model)
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    apply_trainable(model, groups, ["head"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    assert model.head.weight.grad is not None
    with pytest.raises(GroupError, match=r"unknown group\(s\) 'hed' \(groups are stem, block, head\)"):
        apply_trainable(model, groups, ["hed"])


def test_set_train_mode_puts_frozen_batchnorm_in_eval() -> None:
    model = ConvBNNet()
    groups = _groups(model)
    set_train_mode(model, groups, ["block", "head"], dropout="train")
    assert model.training and model.stem.training and not model.stem[1].training
    assert model.block[1].training
    set_train_mode(model, groups, ["block", "head"])  # dropout: frozen puts the whole frozen stem in eval mode
    assert model.training and model.block.training and not any(m.training for m in model.stem.modules())
    set_train_mode(model, groups, ["block", "head"], batchnorm="train")
    assert model.stem[1].training
    assert batchnorm_modes(model, groups, ["block", "head"], "frozen") == {"stem": "eval", "block": "train", "head": "-"}
    assert batchnorm_modes(model, groups, ["block", "head"], "train") == {"stem": "train", "block": "train", "head": "-"}


def test_non_affine_batchnorm_follows_its_parent() -> None:
    model = ConvBNNet()
    model.stem[1] = nn.BatchNorm2d(4, affine=False)
    groups = _groups(model)
    set_train_mode(model, groups, ["block", "head"])
    assert not model.stem[1].training
    set_train_mode(model, groups, ["stem", "block", "head"])
    assert model.stem[1].training


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_prefix_does_not_change_while_the_rest_trains(optimizer: str) -> None:
    torch.manual_seed(0)
    model = ConvBNNet()
    groups = _groups(model)
    trainable = ["block", "head"]
    opt = build_optimizer(build_param_groups(model, groups, lr=0.1, weight_decay=0.1, no_weight_decay=()),
                          name=optimizer, lr=0.1)
    apply_trainable(model, groups, trainable)
    before = _snapshot(model)
    for _ in range(3):
        set_train_mode(model, groups, trainable)
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 6, 6)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = _snapshot(model)
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(before[f"stem.{key}"], after[f"stem.{key}"]), key
    for key in ("block.0.weight", "block.1.weight", "block.1.running_mean", "block.1.running_var", "head.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert after["block.1.num_batches_tracked"] == 3


def test_batchnorm_train_updates_statistics_of_frozen_groups_only() -> None:
    model = ConvBNNet()
    groups = _groups(model)
    apply_trainable(model, groups, ["head"])
    before = _snapshot(model)
    set_train_mode(model, groups, ["head"], batchnorm="train")
    model(torch.randn(4, 3, 5, 5)).sum().backward()
    after = _snapshot(model)
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])
    assert torch.equal(before["stem.1.weight"], after["stem.1.weight"])
    assert model.stem[0].weight.grad is None


def test_the_compiler_puts_the_recipe_paths_on_schedule_and_optimizer_errors(tmp_path) -> None:
    """compile_schedule and the optimizer name their own arguments; compile_recipe says where in the recipe."""
    from recipec.compiler.compile import compile_recipe
    from tests.tinyrecipes import load_tiny, tiny_yaml

    model = "{arch: resnet18, head: {num_classes: 10}}"  # preset groups: the recipe cannot check the names
    groups = "(groups are stem, layer1, layer2, layer3, layer4, head)"
    body = tiny_yaml(model=model, groups=None, freeze="{trainable: [haed], unfreeze: {1: [layer4, layer5]}}")
    with pytest.raises(GroupError) as info:
        compile_recipe(load_tiny(tmp_path, body=body))
    assert info.value.problems == [f"freeze.trainable.0: unknown group 'haed' {groups}",
                                   f"freeze.unfreeze.1.1: unknown group 'layer5' {groups}"]
    body = tiny_yaml(model=model, groups=None, freeze="{trainable: [head]}",
                     optimizer="{name: adamw, lr: 1.0e-2, group_lr: {haed: 0.1}}")
    with pytest.raises(GroupError) as info:
        compile_recipe(load_tiny(tmp_path, body=body))
    assert info.value.problems == [f"optimizer.group_lr.haed: unknown group 'haed' {groups}"]
