"""Training does exactly what the recipe and the plan say (issue 8: items 1, 2, 3, 4, 7, 10, 17)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from recipec.pipeline.outputs import epoch_line
from recipec.compiler.fit_config import head_cache, training_of
from recipec.train.cache import head_only_epochs
from recipec.compiler.data_config import data_kwargs
from recipec.compiler.compile import compile_recipe
from recipec.errors import RecipecError
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data
from recipec.data.loaders import LAST_BATCH_POLICY, set_epoch
from recipec.train.freezing import set_train_mode
from recipec.train.loop import FitConfig, evaluate, fit
from recipec.train.modes import differs_in_training
from recipec.train.schedule import LrShape, build_scheduler, lr_factor, lr_table


# --------------------------------------------------------------------------- helpers: tiny architectures


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.drop_path = StochasticDepth(0.5, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv(x))


def random_body(num_classes: int = 10) -> nn.Module:
    """conv-BN-ReLU, Dropout2d, a residual block with stochastic depth, pool, Dropout, Linear head (index 8)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.3), _Residual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, num_classes))


class _BatchMix(nn.Module):
    # deterministic and mode-free, but each example's output depends on the rest of its batch
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1e-3 * x.mean(0, keepdim=True)


def batch_mixing(num_classes: int = 10) -> nn.Module:
    """tiny_cnn's shape with a module that mixes the examples of a batch before the head (index 8)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), _BatchMix(), nn.Linear(8, num_classes))


def fixed_filter_net(num_classes: int = 10) -> nn.Module:
    """A tiny CNN whose first convolution is a fixed filter bank (requires_grad=False), as some factories define."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    model[0].weight.requires_grad_(False)
    return model


_GROUPS = """\
    groups:
      - {name: body, match: ['^[0-7]\\.']}
      - {name: head, match: ['^8\\.']}
"""


def _recipe(tmp_path: Path, arch: str, *sets: str, kwargs: str = "{}", size: int = 32, groups: str = "",
            per_class: int = 2, batch_size: int = 8, classes: str = "null", epochs: int = 2):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        seed: 1
        device: cpu
        model: {{arch: "{arch}", kwargs: {kwargs}, head: {{num_classes: 10}}}}
        freeze: {{trainable: [head]}}
        optimizer: {{name: adamw, lr: 1.0e-2}}
        data: {{dataset: digits, image_size: {size}, per_class: {per_class}, val_fraction: 0, batch_size: {batch_size},
                classes: {classes}}}
        train: {{epochs: {epochs}}}
    """) + textwrap.dedent(groups))
    return load_recipe(path, list(sets))


def _train(recipe: Any) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], Any]:
    """What `recipec build` does between the data and the exports: compile, feature cache, fit."""
    data = build_data(**data_kwargs(recipe))
    compiled = compile_recipe(recipe, steps_per_epoch=math.ceil(len(data.train) / recipe.train.accumulate))
    cache = head_cache(recipe, compiled, data.train,
                       head_only_epochs(compiled.schedule, compiled.groups[-1].name, recipe.train.epochs))
    t, freeze = recipe.train, recipe.freeze
    history = fit(training_of(compiled, cache=cache), data,
                  FitConfig(epochs=t.epochs, batchnorm=freeze.batchnorm, dropout=freeze.dropout, amp=t.amp,
                            accumulate=t.accumulate, aux_loss_weight=recipe.model.aux_loss_weight))
    return {k: v.detach().clone() for k, v in compiled.model.state_dict().items()}, history, compiled


def _cache_on_off(tmp_path: Path, arch: str, *sets: str, **kwargs: Any) -> tuple[list[bool], list[str]]:
    """Train with the feature cache and without; (cache use per epoch, names of tensors that differ)."""
    cached, history, _ = _train(_recipe(tmp_path, arch, *sets, **kwargs))
    full, plain, _ = _train(_recipe(tmp_path, arch, *sets, "train.feature_cache=off", **kwargs))
    assert [m["train_loss"] for m in history] == [m["train_loss"] for m in plain]
    return [m["feature_cache"] for m in history], [k for k in cached if not torch.equal(cached[k], full[k])]

# --------------------------------------------------------------------------- 8.7 onecycle


@pytest.mark.parametrize("total", [20, 7, 101])
@pytest.mark.parametrize(("pct_start", "div_factor", "final_div_factor"),
                         [(0.25, 25.0, 1e4), (0.3, 10.0, 100.0), (0.5, 1.0, 1.0), (0.05, 4.0, 1e3), (0.9, 25.0, 1e4)])
def test_onecycle_matches_torch_step_for_step(total, pct_start, div_factor, final_div_factor) -> None:
    if pct_start * total == 1:
        pytest.skip("torch divides by zero when the rise lasts exactly one step")
    w = nn.Parameter(torch.zeros(1))
    theirs_opt = torch.optim.SGD([w], lr=0.1)
    theirs = torch.optim.lr_scheduler.OneCycleLR(
        theirs_opt, max_lr=[0.1], total_steps=total, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor, anneal_strategy="cos", cycle_momentum=False)
    # recipec scales every group from its own lr with LambdaLR factors; two groups keep their ratio
    ours_opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
                                {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01}], lr=0.1)
    ours = build_scheduler(ours_opt, LrShape(scheduler="onecycle", pct_start=pct_start, div_factor=div_factor,
                                             final_div_factor=final_div_factor), total_steps=total)
    for _ in range(total):
        theirs_lr = theirs_opt.param_groups[0]["lr"]
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(theirs_lr, rel=1e-12)
        assert ours_opt.param_groups[1]["lr"] == pytest.approx(theirs_lr / 10, rel=1e-12)
        theirs_opt.step(), ours_opt.step()
        theirs.step(), ours.step()
    final = 0.1 / div_factor / final_div_factor
    assert theirs_lr == pytest.approx(final, rel=1e-12)  # the last step runs at the final lr
    assert ours_opt.param_groups[0]["lr"] == pytest.approx(final, rel=1e-12)  # and stays there after it


def test_onecycle_plan_table_is_the_scheduler_at_each_epoch_start() -> None:
    epochs, steps = 4, 5
    shape = LrShape(scheduler="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
                    total_steps=epochs * steps)
    table = lr_table(["head"], {"head": 1.0}, epochs=epochs, shape=shape)[0]
    assert table == [lr_factor(e * steps / (epochs * steps), shape) for e in range(epochs)]
    assert table[0] == pytest.approx(1 / 25, rel=1e-12)


# --------------------------------------------------------------------------- 8.17 epoch numbering


def test_console_epoch_is_the_recipe_epoch() -> None:
    metrics = {"epoch": 2, "train_loss": 0.5, "val_loss": None, "trainable_groups": ["head"], "seconds": 1.0}
    line = epoch_line(metrics, 4)
    assert line.startswith("epoch 2 (3 of 4)  train_loss 0.5000")


# --------------------------------------------------------------------------- 8.1 feature cache == full passes

RANDOM_BODY = "tests.train.test_truthful:random_body"


def test_cache_is_exact_with_dropout_and_stochastic_depth_in_the_frozen_body(tmp_path) -> None:
    used, differ = _cache_on_off(tmp_path, RANDOM_BODY, groups=_GROUPS)
    assert used == [True, True] and differ == []


def test_cache_refuses_a_body_kept_random(tmp_path) -> None:
    used, differ = _cache_on_off(tmp_path, RANDOM_BODY, "freeze.dropout=train", groups=_GROUPS)
    assert used == [False, False] and differ == []


@pytest.mark.parametrize("arch", [RANDOM_BODY, pytest.param("resnet18", marks=pytest.mark.slow)])
def test_cache_is_exact_under_bf16_autocast(tmp_path, arch) -> None:
    used, differ = _cache_on_off(tmp_path, arch, "train.amp=bf16", size=16,
                                 groups=_GROUPS if arch == RANDOM_BODY else "")
    assert used == [True, True] and differ == []


def test_cache_refuses_a_body_whose_outputs_depend_on_the_batch(tmp_path) -> None:
    recipe = _recipe(tmp_path, "tests.train.test_truthful:batch_mixing", groups=_GROUPS)
    cached, history, _ = _train(recipe)
    full, _, _ = _train(_recipe(tmp_path, "tests.train.test_truthful:batch_mixing", "train.feature_cache=off",
                                groups=_GROUPS))
    assert [m["feature_cache"] for m in history] == [False, False]
    assert "depends on the rest of its batch" in history[0]["feature_cache_refused"]
    assert all(torch.equal(cached[k], full[k]) for k in cached)


# Every torchvision family with randomness in its body (dropout of any kind, stochastic depth,
# attention dropout), at the smallest input it takes; the kwargs switch randomness on where it is off by default.
# (arch, image size, kwargs, cache expected: False where torchvision's own classifier dropout sits in the head module)
FAMILIES = [
    ("vgg11", 32, "{}", True),
    ("alexnet", 64, "{}", True),
    ("squeezenet1_1", 32, "{}", False),
    ("convnext_tiny", 32, "{stochastic_depth_prob: 0.5}", True),
    ("swin_t", 32, "{dropout: 0.2, attention_dropout: 0.2}", True),  # stochastic depth 0.2, fixed by swin_t
    # stochastic depth 0.2 and input size 224, fixed by maxvit_t; its CPU kernels make an example's
    # output depend on the rest of the batch (~3e-7), which the cache's check sees: no cache
    ("maxvit_t", 224, "{}", False),
    ("efficientnet_b0", 32, "{stochastic_depth_prob: 0.5}", False),
    ("efficientnet_v2_s", 32, "{stochastic_depth_prob: 0.5}", False),
    ("mobilenet_v2", 32, "{}", False),
    ("mobilenet_v3_small", 32, "{}", True),
    ("mnasnet0_5", 32, "{}", False),
    ("vit_b_16", 32, "{image_size: 32, dropout: 0.2, attention_dropout: 0.2}", True),
    ("densenet121", 32, "{drop_rate: 0.3}", True),
    ("googlenet", 32, "{dropout: 0.5}", True),
    ("inception_v3", 75, "{dropout: 0.5}", True),
    ("regnet_x_400mf", 32, "{}", True),
    ("shufflenet_v2_x0_5", 32, "{}", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "kwargs", "cached"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_cache_is_exact_for_every_family(tmp_path, arch, size, kwargs, cached) -> None:
    per_class = 1 if size > 100 else 2
    used, differ = _cache_on_off(tmp_path, arch, kwargs=kwargs, size=size, per_class=per_class)
    assert used == [cached, cached] and differ == []


# --------------------------------------------------------------------------- 8.2 frozen means a fixed function


def _head_inputs(model: nn.Module, head: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    # a copy: an inplace dropout at the start of the head would change the tensor seen
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen[0]


def _frozen_body_check(tmp_path: Path, arch: str, size: int, kwargs: str) -> None:
    compiled = compile_recipe(_recipe(tmp_path, arch, kwargs=kwargs, size=size))
    model, groups = compiled.model, compiled.groups
    # the body ends where the head's group begins: efficientnet's classifier holds a dropout and the
    # head, and that dropout is the head's (it trains with it)
    path = compiled.head_prefix.rstrip(".")
    head_params = set(model.get_submodule(path).parameters())
    while "." in path and set(model.get_submodule(path.rpartition(".")[0]).parameters()) <= head_params:
        path = path.rpartition(".")[0]
    head = model.get_submodule(path)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    # the family really is random in training mode, and the detector sees a module that makes it so
    model.train()
    random = not torch.equal(_head_inputs(model, head, x, 1), _head_inputs(model, head, x, 2))
    outside = [m for m in model.modules() if m not in set(head.modules())]
    flagged = [m for m in outside if differs_in_training(m) and not isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not random or flagged
    # freeze.dropout: frozen (the default): the frozen body is a fixed function in training mode
    set_train_mode(model, groups, ["head"])
    assert torch.equal(_head_inputs(model, head, x, 1), _head_inputs(model, head, x, 2))
    set_train_mode(model, groups, ["head"], dropout="train")
    assert torch.equal(_head_inputs(model, head, x, 1), _head_inputs(model, head, x, 2)) != random


def test_frozen_vgg11_is_a_fixed_function(tmp_path) -> None:
    _frozen_body_check(tmp_path, "vgg11", 32, "{}")


def test_frozen_random_layers_in_plan_and_modes(tmp_path) -> None:
    plan = compile_recipe(_recipe(tmp_path, RANDOM_BODY, groups=_GROUPS, epochs=3)).plan.to_dict()
    assert plan["dropout_policy"] == "frozen"
    rows = {row["name"]: row for row in plan["groups"]}
    assert rows["body"]["dropout"] == ["eval", "eval", "eval"] and rows["head"]["dropout"] == ["-", "-", "-"]
    assert "batchnorm: frozen; dropout: frozen" in compile_recipe(_recipe(tmp_path, RANDOM_BODY, groups=_GROUPS)).plan.text()
    recipe = _recipe(tmp_path, RANDOM_BODY, "freeze.dropout=train", "freeze.unfreeze={2: [body]}", groups=_GROUPS, epochs=3)
    rows = {row["name"]: row for row in compile_recipe(recipe).plan.to_dict()["groups"]}
    assert rows["body"]["dropout"] == ["train", "train", "train"]
    # a new head's own dropout belongs to the head and trains with it
    rows = {row["name"]: row for row in compile_recipe(
        _recipe(tmp_path, "resnet18", "model.head.dropout=0.2")).plan.to_dict()["groups"]}
    assert rows["head"]["dropout"] == ["train", "train"] and rows["layer4"]["dropout"] == ["-", "-"]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "kwargs", "cached"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_frozen_body_is_a_fixed_function_for_every_family(tmp_path, arch, size, kwargs, cached) -> None:
    _frozen_body_check(tmp_path, arch, size, kwargs)


# --------------------------------------------------------------------------- 8.3 auxiliary classifiers


def test_aux_classifiers_get_the_new_classes_and_train_with_their_weight(tmp_path) -> None:
    recipe = _recipe(tmp_path, "googlenet", "freeze.trainable=[aux, head]", "model.aux_loss_weight=0.3",
                     kwargs="{aux_logits: true}", per_class=1, epochs=1)
    after, history, compiled = _train(recipe)
    plan = compiled.plan.to_dict()
    assert plan["head"]["aux"] == ["aux1.fc2", "aux2.fc2"] and plan["head"]["aux_loss_weight"] == 0.3
    assert "aux loss  0.3 x" in compiled.plan.text()
    model = compiled.model
    assert after["aux1.fc2.weight"].shape == (10, 1024) and math.isfinite(history[0]["train_loss"])
    for aux in (model.aux1.fc2, model.aux2.fc2):  # the optimizer stepped them: they had gradients
        assert compiled.optimizer.state[aux.weight]["step"] > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # evaluation: the main output only
    batch = [(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))]
    assert math.isfinite(evaluate(model, batch, torch.device("cpu"))[0])


def test_aux_loss_weight_without_aux_classifiers_is_located(tmp_path) -> None:
    with pytest.raises(RecipecError, match="model.aux_loss_weight: googlenet has no auxiliary classifiers"):
        compile_recipe(_recipe(tmp_path, "googlenet", "model.aux_loss_weight=0.3"))


# --------------------------------------------------------------------------- 8.4 parameters fixed by the architecture


def test_parameters_the_architecture_freezes_never_train(tmp_path) -> None:
    recipe = _recipe(tmp_path, "tests.train.test_truthful:fixed_filter_net", "freeze.trainable=null", groups=_GROUPS)
    compiled = compile_recipe(recipe)
    assert not compiled.model[0].weight.requires_grad and compiled.model[3].weight.requires_grad
    plan = compiled.plan.to_dict()
    assert plan["fixed_parameters"] == {"tensors": ["0.weight"], "params": 4 * 3 * 3 * 3}
    total = sum(p.numel() for p in compiled.model.parameters())
    assert plan["parameters"]["trainable"] == [total - 108, total - 108]
    assert "108 parameters in 1 tensors the architecture keeps frozen" in compiled.plan.text()
    before = compiled.model[0].weight.detach().clone()
    after, history, _ = _train(recipe)
    assert torch.equal(after["0.weight"], before) and not torch.equal(after["3.weight"], compiled.model[3].weight)
    assert history[0]["trainable_params"] == total - 108
    # a fixed first convolution rebuilt for in_channels stays fixed
    gray = compile_recipe(_recipe(tmp_path, "tests.train.test_truthful:fixed_filter_net", "freeze.trainable=null",
                                  "model.in_channels=1", groups=_GROUPS))
    assert not gray.model[0].weight.requires_grad and gray.model[0].weight.shape == (4, 1, 3, 3)
    assert gray.plan.to_dict()["fixed_parameters"] == {"tensors": ["0.weight"], "params": 36}


# --------------------------------------------------------------------------- 8.10 a last batch of one


TINY_BN = "tests.tinynets:tiny_cnn"


@pytest.mark.parametrize(("size", "accumulate"), [(3, 1), (4, 1), (5, 1), (7, 1), (8, 1), (9, 1), (5, 2), (8, 2), (9, 2)])
def test_any_split_size_trains_batchnorm(tmp_path, size, accumulate) -> None:
    # batches of 4: n * 4 - 1, n * 4 and n * 4 + 1 for n = 1, 2
    recipe = _recipe(tmp_path, TINY_BN, "freeze.trainable=null", "freeze.batchnorm=train",
                     f"train.accumulate={accumulate}", kwargs="{width: 4}", size=8, per_class=size, batch_size=4,
                     classes="['0']", groups=_GROUPS, epochs=2)
    data = build_data(**data_kwargs(recipe))
    dropped = 1 if size % 4 == 1 else 0
    assert data.info["batches"]["dropped_per_epoch"] == dropped and "last_batch" in data.info["batches"]
    orders = []
    for epoch in (0, 1, 0):
        set_epoch(data, epoch)
        batches = [y.tolist() and len(y) for _, y in data.train]
        assert min(batches) >= 2 and sum(batches) == size - dropped and len(batches) == len(data.train)
        orders.append([x.sum().item() for x, _ in data.train])
    assert orders[0] != orders[1] or size <= 4
    _, history, _ = _train(recipe)  # no "Expected more than 1 value per channel when training"
    assert len(history) == 2


def test_the_plan_states_the_last_batch_policy(tmp_path) -> None:
    plan = compile_recipe(_recipe(tmp_path, RANDOM_BODY, "train.accumulate=2", groups=_GROUPS, batch_size=4)).plan
    assert plan.to_dict()["batches"] == {"batch_size": 4, "accumulate": 2, "last_batch": LAST_BATCH_POLICY}
    assert f"batches   4 x 2 per step; {LAST_BATCH_POLICY}" in plan.text()


def test_cache_batches_match_a_loader_that_drops_the_single_last(tmp_path) -> None:
    # 9 examples in batches of 4: the loader leaves one out each epoch, and so must the cache
    used, differ = _cache_on_off(tmp_path, RANDOM_BODY, groups=_GROUPS, per_class=9, batch_size=4, classes="['0']")
    assert used == [True, True] and differ == []
