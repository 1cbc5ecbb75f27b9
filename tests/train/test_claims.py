"""What the fit loop, the best-epoch rule and the feature cache claim, each checked where a plausible slip
would break it (issue 25, items 9, 10, 12, 13): gradient accumulation is the big batch, a short last step
included; clipping bounds the global norm of the unscaled gradient; a tie keeps the earlier epoch; the cache
refuses a body kept random by any random module, not only ``nn.Dropout``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import StochasticDepth

from recipec.data.loaders import Data
from recipec.model.groups import LayerGroup, assign_groups
from recipec.train.cache import CacheConfig, cache_refusal, head_cache
from recipec.train.freezing import compile_schedule
from recipec.train.loop import EarlyStopping, FitConfig, Training, fit
from recipec.train.select import Selection
from recipec.train.tasks import MULTICLASS

# --------------------------------------------------------------------------- a fit on a linear model

N, FEATURES, CLASSES = 10, 12, 3


class _Recorded(torch.optim.SGD):
    """SGD that keeps, at every step, the gradients it is about to apply (after unscaling and clipping)."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure: Any = None) -> Any:
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return super().step(closure)


def _examples() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # large inputs: gradients far above the clip values below
    return (10 * torch.randn(N, 3, 2, 2, generator=generator), torch.randint(0, CLASSES, (N,), generator=generator))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(FEATURES, CLASSES))  # no batch statistics


class _Scripted:
    """A task whose validation reports ``values`` of ``metric``, one per epoch from ``start``."""

    def __init__(self, metric: str, values: list[float], start: int = 0) -> None:
        self.metric, self.values, self.epoch = metric, values, start

    def validate(self, model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        self.epoch += 1
        return {"val_loss": None, "val_acc": None} | {self.metric: self.values[self.epoch - 1]}


def _fit(batch_size: int, accumulate: int = 1, *, epochs: int = 1, grad_clip: float | None = None,
         scaler: torch.amp.GradScaler | None = None, task: Any = MULTICLASS,
         early_stopping: EarlyStopping | None = None, history: list[dict[str, Any]] | None = None,
         ) -> tuple[nn.Module, _Recorded, Any, list[dict[str, Any]]]:
    """Plain SGD over the N examples in order; the lr halves at every optimizer step, so a missed step shows."""
    model = _model()
    names = tuple(name for name, _ in model.named_parameters())
    groups = [LayerGroup("all", names, sum(p.numel() for p in model.parameters()))]
    optimizer = _Recorded([{"params": list(model.parameters()), "name": "all"}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    x, y = _examples()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    data = Data(train=loader, val=loader if task is not MULTICLASS else None, classes=["a", "b", "c"],
                normalization=None, info={})
    training = Training(model, optimizer, scheduler, groups, compile_schedule(["all"], epochs=epochs, trainable=None),
                        torch.device("cpu"), task, scaler=scaler)
    config = FitConfig(epochs=epochs, accumulate=accumulate, grad_clip=grad_clip, early_stopping=early_stopping)
    done = fit(training, data, config, start_epoch=len(history or []), history=history or [])
    return model, optimizer, scheduler, done


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def _big_batch_sgd(big: int, *, epochs: int, grad_clip: float | None) -> nn.Module:
    """What _fit should do, written out: a step per `big` examples (the last one short) on their mean loss."""
    model = _model()
    x, y = _examples()
    step = 0
    for _ in range(epochs):
        for start in range(0, N, big):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[start:start + big]), y[start:start + big]).backward()
            grads = [p.grad for p in model.parameters()]
            norm = _norm(grads)
            factor = min(1.0, grad_clip / norm) if grad_clip is not None else 1.0
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.1 * 0.5 ** step * factor * g
            step += 1
    return model


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(("batch_size", "accumulate", "big"), [
    (4, 2, 8),   # batches 4 4 | 2: the last step has one batch
    (4, 3, 12),  # batches 4 4 2: one step, its last batch short
    (3, 2, 6),   # batches 3 3 | 3 1: the last step has two batches, the second short
])
@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_accumulation_is_the_big_batch_a_short_last_step_included(batch_size, accumulate, big, grad_clip) -> None:
    small, _, small_lr, _ = _fit(batch_size, accumulate, epochs=2, grad_clip=grad_clip)
    large, _, large_lr, _ = _fit(big, epochs=2, grad_clip=grad_clip)
    steps = math.ceil(math.ceil(N / batch_size) / accumulate)  # the plan's steps per epoch (pipeline.planning)
    assert steps == math.ceil(N / big)
    assert small_lr.last_epoch == large_lr.last_epoch == 2 * steps
    expected = _big_batch_sgd(big, epochs=2, grad_clip=grad_clip)
    assert _same_weights(small, expected) and _same_weights(large, expected)
    assert not _same_weights(expected, _model())


def test_a_short_last_step_is_the_mean_over_its_own_examples() -> None:
    # batches 4 4 | 2: the second step's gradient is the mean over the last 2 examples, not half of it
    _, optimizer, _, _ = _fit(4, 2)
    x, y = _examples()
    reference = _model()
    with torch.no_grad():
        for p, g in zip(reference.parameters(), optimizer.seen[0]):
            p -= 0.1 * g
    nn.functional.cross_entropy(reference(x[8:]), y[8:]).backward()
    assert len(optimizer.seen) == 2
    assert all(torch.allclose(got, p.grad, rtol=1e-5, atol=1e-6) for got, p in zip(optimizer.seen[1], reference.parameters()))


# --------------------------------------------------------------------------- clipping


def _first_gradient() -> list[torch.Tensor]:
    """The gradient of the first step of _fit(N) without clipping: the mean loss over all N examples."""
    model = _model()
    x, y = _examples()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("scaler", [None, 2.0 ** 12], ids=["fp32", "loss-scaled"])
def test_grad_clip_scales_the_global_norm_of_the_unscaled_gradient(scaler) -> None:
    clip = 0.05
    scale = None if scaler is None else torch.amp.GradScaler("cpu", init_scale=scaler)
    _, optimizer, _, _ = _fit(N, grad_clip=clip, scaler=scale)
    unclipped = _first_gradient()
    assert _norm(unclipped) > 10 * clip and max(float(g.abs().max()) for g in unclipped) > 2 * clip
    (got,) = optimizer.seen
    assert _norm(got) == pytest.approx(clip, rel=1e-4)  # the global norm, after unscaling
    factor = clip / _norm(unclipped)  # one factor for every tensor: the direction is kept
    assert all(torch.allclose(g, u * factor, rtol=1e-4, atol=1e-7) for g, u in zip(got, unclipped))


def test_a_gradient_within_grad_clip_is_untouched() -> None:
    _, optimizer, _, _ = _fit(N, grad_clip=1e6)
    assert all(torch.allclose(g, u, rtol=1e-6, atol=1e-7) for g, u in zip(optimizer.seen[0], _first_gradient()))


# --------------------------------------------------------------------------- the best epoch


@pytest.mark.parametrize(("mode", "values", "best"), [
    ("max", [0.8, 0.9, 0.9], 1),
    ("max", [0.9, 0.9, 0.8], 0),
    ("min", [0.5, 0.3, 0.3], 1),
    ("min", [0.3, 0.3, 0.3], 0),
])
def test_a_tie_keeps_the_earlier_epoch(mode, values, best) -> None:
    selection = Selection("val_acc" if mode == "max" else "val_loss", mode)
    news = [selection.update({"epoch": e, selection.metric: v}) for e, v in enumerate(values)]
    assert (selection.epoch, selection.value) == (best, values[best])
    assert news == [e == best or (e < best and values[e] != values[best]) for e in range(len(values))]
    replayed = Selection(selection.metric, mode).replay([{"epoch": e, selection.metric: v} for e, v in enumerate(values)])
    assert replayed.epoch == best


def test_the_best_epoch_skips_missing_and_non_finite_values() -> None:
    selection = Selection("val_loss", "min")
    for epoch, value in enumerate([None, float("nan"), 0.7, float("-inf"), 0.4, 0.6]):
        selection.update({"epoch": epoch, "val_loss": value})
    assert (selection.epoch, selection.value) == (4, 0.4)


@pytest.mark.parametrize(("metric", "values"), [
    ("val_acc", [0.8, 0.9, 0.9, 0.9, 0.95]),
    ("val_loss", [0.5, 0.3, 0.3, 0.3, 0.1]),
])
def test_early_stopping_counts_a_tie_as_no_improvement(metric, values) -> None:
    rule = EarlyStopping(metric=metric, patience=2)
    _, _, _, history = _fit(N, epochs=5, task=_Scripted(metric, values), early_stopping=rule)
    assert [m["early_stopped"] for m in history] == [False, False, False, True]  # two ties after the best
    # resumed after epoch 1 or 2, the run replays the history and stops at the same epoch
    for done in (2, 3):
        _, _, _, resumed = _fit(N, epochs=5, task=_Scripted(metric, values, start=done), early_stopping=rule,
                                history=history[:done])
        assert [m["early_stopped"] for m in resumed] == [False, False, False, True]


def test_early_stopping_wants_more_than_min_delta() -> None:
    rule = EarlyStopping(metric="val_acc", patience=1, min_delta=0.05)
    _, _, _, history = _fit(N, epochs=4, task=_Scripted("val_acc", [0.5, 0.56, 0.6, 0.9]), early_stopping=rule)
    assert [m["early_stopped"] for m in history] == [False, False, True]  # +0.06 improves, +0.04 does not


# --------------------------------------------------------------------------- the feature cache refuses a random body


class _Residual(nn.Module):
    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop_path = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv(x))


def _body_with(random: str) -> nn.Module:
    """conv, one random module (no other), pool, Linear head at index 4."""
    if random == "StochasticDepth":
        middle: nn.Module = _Residual(StochasticDepth(0.5, "row"))
    elif random == "DropPath":
        timm_layers = pytest.importorskip("timm.layers")  # an optional extra
        middle = _Residual(timm_layers.DropPath(0.5))
    else:
        middle = nn.Dropout2d(0.5)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), middle, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize(("random", "where"), [
    ("StochasticDepth", "1.drop_path (StochasticDepth)"),
    ("Dropout2d", "1 (Dropout2d)"),
    ("DropPath", "1.drop_path (DropPath)"),
])
def test_the_cache_refuses_a_body_whose_only_randomness_is_not_dropout(random, where) -> None:
    model = _body_with(random)
    groups = assign_groups(model, [("body", [r"^[0-3]\."]), ("head", [r"^4\."])], head_prefix="4.")
    refusal = cache_refusal(model, head_path="4", groups=groups, augment=(), batchnorm="frozen", distributed=False,
                            dropout="train")
    assert refusal == f"{where} computes differently in training mode (freeze.dropout: train keeps it random while frozen)"
    assert cache_refusal(model, head_path="4", groups=groups, augment=(), batchnorm="frozen", distributed=False,
                         dropout="frozen") is None
    # the build's entry point passes freeze.dropout on: the cache serves no epoch and says why
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)), batch_size=2)
    cache = head_cache(model, groups, "4.", loader, [0, 1], CacheConfig(dropout="train"))
    assert cache is not None and cache.refused == refusal and not cache.epochs
    cache = head_cache(model, groups, "4.", loader, [0, 1], CacheConfig(dropout="frozen"))
    assert cache is not None and cache.refused is None and cache.epochs == {0, 1}
