from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from recipec.errors import GroupError, RecipeError
from recipec.model.families import preset_groups
from recipec.model.groups import LayerGroup, assign_groups
from recipec.compiler.fit_config import lr_shape
from recipec.recipe.spec import CosineSchedulerSpec, NoSchedulerSpec, OneCycleSchedulerSpec, StepSchedulerSpec
from recipec.train.freezing import apply_trainable, compile_schedule, set_train_mode
from recipec.train.optim import build_optimizer, build_param_groups, group_learning_rates
from recipec.train.schedule import LrShape, build_scheduler, lr_factor, lr_table

RESNET = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture(scope="module")
def resnet18() -> tuple[nn.Module, list[LayerGroup]]:
    model = torchvision.models.resnet18(weights=None, num_classes=7)
    return model, assign_groups(model, preset_groups("resnet18", model, "fc."), head_prefix="fc.")


class NormZoo(nn.Module):
    """One of each kind of normalisation layer, plus a custom one that is only recognisable by name."""

    class ScaleNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))
            self.matrix = nn.Parameter(torch.ones(4, 4))

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4, bias=False)
        self.rms = nn.RMSNorm(4)
        self.custom = NormZoo.ScaleNorm()
        self.pos_embedding = nn.Parameter(torch.zeros(1, 4))
        self.fc = nn.Linear(4, 2)


def _tiny() -> tuple[nn.Module, list[LayerGroup]]:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 3))
    return model, assign_groups(model, [("a", [r"^[01]\."]), ("b", [r"^2\."]), ("head", [r"^3\."])])


def test_seed_discriminative_adamw(resnet18: tuple[nn.Module, list[LayerGroup]]) -> None:
    model, groups = resnet18
    assert [g.name for g in groups] == RESNET
    param_groups = build_param_groups(model, groups, lr=1e-3, lr_decay=2.6, weight_decay=0.01)
    optimizer = build_optimizer(param_groups, name="adamw", lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert list(lrs) == RESNET
    for i, name in enumerate(RESNET):
        assert lrs[name] == pytest.approx(1e-3 / 2.6 ** (5 - i), rel=1e-12)
    assert [(g["name"], g["no_decay"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (name, no_decay, 0.0 if no_decay else 0.01) for name in RESNET for no_decay in (False, True)]
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["no_decay"] for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if not g["no_decay"] for p in g["params"]}
    bn_params = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d) for p in ("weight", "bias")}
    assert no_decay == bn_params | {"fc.bias"}
    assert decay == {n for n, p in model.named_parameters() if p.ndim > 1}
    assert all(g["initial_lr"] == g["lr"] for g in optimizer.param_groups)


def test_group_learning_rates() -> None:
    lrs = group_learning_rates(["a", "b", "c"], lr=1.0, lr_decay=10.0, group_lr={"a": 0.5})
    assert lrs == {"a": 0.5, "b": pytest.approx(0.1), "c": 1.0}
    assert group_learning_rates(["a", "b"], lr=0.1) == {"a": 0.1, "b": 0.1}
    with pytest.raises(GroupError) as info:
        group_learning_rates(["a", "head"], lr=1.0, group_lr={"haed": 0.1})
    assert info.value.paths == [("group_lr", "haed")]  # the compiler relabels it optimizer.group_lr.haed
    assert info.value.problems == ["group_lr.haed: unknown group 'haed' (groups are a, head)"]


def test_no_weight_decay_rules() -> None:
    model = NormZoo()
    groups = assign_groups(model, [("all", ["."])])

    def exempt(rules: tuple[str, ...]) -> set[str]:
        pgs = build_param_groups(model, groups, lr=0.1, weight_decay=0.1, no_weight_decay=rules)
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)] for g in pgs if g["no_decay"] for p in g["params"]}

    assert exempt(("bias",)) == {"bn.bias", "gn.bias", "fc.bias"}
    assert exempt(("norm",)) == {"bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "rms.weight",
                                 "custom.gain"}
    assert exempt((r"pos_embed",)) == {"pos_embedding"}
    assert exempt(()) == set()
    with pytest.raises(GroupError) as info:
        build_param_groups(model, groups, lr=0.1, no_weight_decay=("bias", "(unclosed"))
    assert info.value.paths == [("no_weight_decay", 1)]


def test_freeze_all_but_the_classifier_counts(resnet18: tuple[nn.Module, list[LayerGroup]]) -> None:
    model, groups = resnet18
    classes = 7
    schedule = compile_schedule([g.name for g in groups], epochs=1, trainable=["head"])
    apply_trainable(model, groups, schedule.trainable_at(0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trainable == 512 * classes + classes == groups[-1].numel
    assert frozen == 11_176_512 == sum(g.numel for g in groups[:-1])
    apply_trainable(model, groups, RESNET)


def test_gradual_schedule_on_resnet_groups(resnet18: tuple[nn.Module, list[LayerGroup]]) -> None:
    _, groups = resnet18
    names = [g.name for g in groups]
    schedule = compile_schedule(names, epochs=30, trainable=["head"], gradual_every=5, gradual_start=5)
    unfrozen = {e: list(schedule.unfrozen_at(e)) for e in range(30) if schedule.unfrozen_at(e)}
    assert {0: list(schedule.trainable_at(0)), **unfrozen} == {
        0: ["head"], 5: ["layer4"], 10: ["layer3"], 15: ["layer2"], 20: ["layer1"], 25: ["stem"]}
    assert schedule == compile_schedule(names, epochs=30, trainable=["head"], unfreeze={
        5: ["layer4"], 10: ["layer3"], 15: ["layer2"], 20: ["layer1"], 25: ["stem"]})


def test_adamw_weight_decay_leaves_frozen_parameters_bit_identical() -> None:
    torch.manual_seed(0)
    model, groups = _tiny()
    optimizer = build_optimizer(build_param_groups(model, groups, lr=0.1, weight_decay=0.5), name="adamw", lr=0.1)
    model(torch.randn(3, 4)).sum().backward()  # every parameter gets a grad before freezing
    apply_trainable(model, groups, ["head"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for name, param in model.named_parameters():
        if name.startswith("3."):  # the head trains
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name
    assert all(p not in optimizer.state for n, p in model.named_parameters() if not n.startswith("3."))


def test_unfreezing_keeps_lr_ratios_and_optimizer_state() -> None:
    torch.manual_seed(0)
    model, groups = _tiny()
    names = [g.name for g in groups]
    epochs, steps_per_epoch, k = 4, 3, 2
    schedule = compile_schedule(names, epochs=epochs, trainable=["head"], unfreeze={k: ["b"]})
    optimizer = build_optimizer(build_param_groups(model, groups, lr=1e-2, lr_decay=3.0, weight_decay=0.01),
                                name="adamw", lr=1e-2)
    scheduler = build_scheduler(optimizer, LrShape(scheduler="cosine", warmup=0.2),
                                total_steps=epochs * steps_per_epoch)
    head_weight = model[3].weight
    seen: dict[str, torch.Tensor] = {}
    for epoch in range(epochs):
        apply_trainable(model, groups, schedule.trainable_at(epoch))
        set_train_mode(model, groups, schedule.trainable_at(epoch))
        if epoch == k:
            seen = {key: value for key, value in optimizer.state[head_weight].items()}
            assert seen["step"] == k * steps_per_epoch
            assert model[2].weight not in optimizer.state
        for _ in range(steps_per_epoch):
            lr = {g["name"]: g["lr"] for g in optimizer.param_groups}
            assert lr["b"] / lr["head"] == pytest.approx(1 / 3, rel=1e-12)
            assert lr["a"] / lr["head"] == pytest.approx(1 / 9, rel=1e-12)
            model(torch.randn(5, 4)).square().mean().backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    state = optimizer.state[head_weight]
    assert state["exp_avg"] is seen["exp_avg"] and state["exp_avg_sq"] is seen["exp_avg_sq"]
    assert state["step"] == epochs * steps_per_epoch
    assert optimizer.state[model[2].weight]["step"] == (epochs - k) * steps_per_epoch
    assert model[0].weight not in optimizer.state


def test_optimizer_state_dict_round_trip_keeps_group_names() -> None:
    model, groups = _tiny()
    optimizer = build_optimizer(build_param_groups(model, groups, lr=0.1, weight_decay=0.1), name="sgd", lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    again = build_optimizer(build_param_groups(model, groups, lr=0.1, weight_decay=0.1), name="sgd", lr=0.1)
    again.load_state_dict(optimizer.state_dict())
    assert [(g["name"], g["no_decay"]) for g in again.param_groups] == [
        ("a", False), ("a", True), ("b", False), ("b", True), ("head", False), ("head", True)]


def test_build_optimizer_kinds_and_errors() -> None:
    model, groups = _tiny()
    pgs = build_param_groups(model, groups, lr=0.1)
    assert isinstance(build_optimizer(pgs, name="adam", lr=0.1, betas=(0.8, 0.9)), torch.optim.Adam)
    sgd = build_optimizer(pgs, name="sgd", lr=0.1, momentum=0.5, nesterov=True)
    assert sgd.param_groups[0]["momentum"] == 0.5 and sgd.param_groups[0]["nesterov"]
    with pytest.raises(RecipeError, match="^name: unknown optimizer 'lamb'"):
        build_optimizer(pgs, name="lamb", lr=0.1)
    with pytest.raises(RecipeError, match="^nesterov: needs momentum > 0"):
        build_optimizer(pgs, name="sgd", lr=0.1, momentum=0.0, nesterov=True)


# --------------------------------------------------------------------------- schedules


def test_cosine_shape() -> None:
    assert lr_factor(0.0, LrShape(scheduler="cosine")) == 1.0
    assert lr_factor(0.5, LrShape(scheduler="cosine")) == pytest.approx(0.5, rel=1e-12)
    assert lr_factor(1.0, LrShape(scheduler="cosine", min_factor=0.1)) == pytest.approx(0.1, rel=1e-12)
    assert lr_factor(1.0, LrShape(scheduler="cosine")) == pytest.approx(0.0, abs=1e-15)
    # halfway after warmup
    assert lr_factor(0.6, LrShape(scheduler="cosine", warmup=0.2)) == pytest.approx(0.5, rel=1e-12)


def test_warmup_is_linear_and_starts_above_zero() -> None:
    assert lr_factor(0.0, LrShape(scheduler="cosine", warmup=0.2)) == 0.01
    assert lr_factor(0.1, LrShape(scheduler="cosine", warmup=0.2)) == pytest.approx(0.01 + 0.99 * 0.5, rel=1e-12)
    assert lr_factor(0.2, LrShape(scheduler="cosine", warmup=0.2)) == 1.0
    assert lr_factor(0.05, LrShape(scheduler="none", warmup=0.1, warmup_start=0.0)) == pytest.approx(0.5, rel=1e-12)
    assert lr_factor(0.5, LrShape(scheduler="none", warmup=0.1)) == 1.0


def test_step_shape() -> None:
    assert [lr_factor(e / 10, LrShape(scheduler="step", step_every=0.1, gamma=0.5)) for e in range(10)] == [
        0.5 ** e for e in range(10)]  # 0.7 / 0.1 is 6.999... in floats: the boundary must still count
    assert lr_factor(0.29, LrShape(scheduler="step", step_every=0.3)) == 1.0
    assert lr_factor(0.3, LrShape(scheduler="step", step_every=0.3)) == pytest.approx(0.1)
    assert lr_factor(0.05, LrShape(scheduler="step", step_every=0.3, warmup=0.1)) == pytest.approx(0.505)


def test_onecycle_shape() -> None:
    shape = LrShape(scheduler="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert lr_factor(0.0, shape) == pytest.approx(1 / 25, rel=1e-12)
    assert lr_factor(0.3, shape) == 1.0
    assert lr_factor(0.15, shape) == pytest.approx((1 + 1 / 25) / 2, rel=1e-12)
    assert lr_factor(1.0, shape) == pytest.approx(1 / 25 / 1e4, rel=1e-12)
    assert lr_factor(0.29, shape) < 1.0 and lr_factor(0.31, shape) < 1.0


def test_onecycle_matches_torch_one_cycle_lr() -> None:
    # torch's phases end at steps pct_start * total - 1 (here 25) and total - 1 (here 100), so its
    # step s is our progress s / 100 with pct_start 0.25
    total = 101
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=total, pct_start=26 / 101,
                                                    anneal_strategy="cos", cycle_momentum=False)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total - 1):
        optimizer.step()
        one_cycle.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    ours = [lr_factor(s / 100, LrShape(scheduler="onecycle", pct_start=0.25)) for s in range(total)]
    assert ours == pytest.approx(lrs, rel=1e-9)


def test_bad_schedule_arguments() -> None:
    with pytest.raises(RecipeError, match="unknown scheduler 'linear'"):
        lr_factor(0.0, LrShape(scheduler="linear"))
    with pytest.raises(RecipeError, match="step_every"):
        lr_factor(0.0, LrShape(scheduler="step"))
    with pytest.raises(RecipeError, match="onecycle has its own warmup"):
        lr_factor(0.0, LrShape(scheduler="onecycle", warmup=0.1))


def test_lr_shape_from_specs() -> None:
    assert lr_shape(NoSchedulerSpec(name="none"), 10) == LrShape(scheduler="none")
    assert lr_shape(CosineSchedulerSpec(name="cosine", warmup_epochs=2, min_factor=0.01), 10) == LrShape(
        scheduler="cosine", warmup=0.2, min_factor=0.01)
    assert lr_shape(StepSchedulerSpec(name="step", step_epochs=4, gamma=0.5), 8) == LrShape(
        scheduler="step", warmup=0.0, step_every=0.5, gamma=0.5)
    assert lr_shape(OneCycleSchedulerSpec(name="onecycle", pct_start=0.3), 5) == LrShape(
        scheduler="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert lr_shape(OneCycleSchedulerSpec(name="onecycle", pct_start=0.3), 5, steps_per_epoch=3).total_steps == 15
    with pytest.raises(RecipeError) as info:
        lr_shape(CosineSchedulerSpec(name="cosine", warmup_epochs=3), 3)
    assert info.value.paths == [("optimizer", "scheduler", "warmup_epochs")]


@pytest.mark.parametrize("factor_kwargs", [
    {"scheduler": "none"},
    {"scheduler": "cosine", "warmup": 0.3, "min_factor": 0.05},
    {"scheduler": "step", "warmup": 0.1, "step_every": 0.4, "gamma": 0.5},
    {"scheduler": "onecycle", "pct_start": 0.3},
], ids=lambda kw: kw["scheduler"])
@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7])
def test_lr_table_is_what_the_scheduler_sets(factor_kwargs: dict, steps_per_epoch: int) -> None:
    model, groups = _tiny()
    epochs = 5
    lrs = group_learning_rates([g.name for g in groups], lr=1e-3, lr_decay=2.6)
    optimizer = build_optimizer(build_param_groups(model, groups, lr=1e-3, lr_decay=2.6), name="sgd", lr=1e-3)
    scheduler = build_scheduler(optimizer, LrShape(**factor_kwargs), total_steps=epochs * steps_per_epoch)
    actual: dict[str, list[float]] = {g.name: [] for g in groups}
    for step in range(epochs * steps_per_epoch):
        if step % steps_per_epoch == 0:
            for name, lr in {g["name"]: g["lr"] for g in optimizer.param_groups}.items():
                actual[name].append(lr)
        assert optimizer.param_groups[0]["lr"] > 0
        optimizer.step()
        scheduler.step()
    # total_steps (onecycle's step-exact phases; the others ignore it), as the compiler passes it
    shape = LrShape(**factor_kwargs, total_steps=epochs * steps_per_epoch)
    table = lr_table(list(actual), lrs, epochs=epochs, shape=shape)
    assert table == list(actual.values())


def test_build_scheduler_checks_arguments_now() -> None:
    model, groups = _tiny()
    optimizer = build_optimizer(build_param_groups(model, groups, lr=0.1), name="sgd", lr=0.1)
    with pytest.raises(RecipeError, match="step_every"):
        build_scheduler(optimizer, LrShape(scheduler="step"), total_steps=10)
    with pytest.raises(RecipeError, match="total_steps=0"):
        build_scheduler(optimizer, LrShape(scheduler="none"), total_steps=0)
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.1)
