"""The learning-rate range test (Leslie Smith, 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``).

The recipe is compiled as a build compiles it and set up as its epoch 0 runs: the groups
trainable at epoch 0, the BatchNorm and dropout policy of the frozen ones
(:func:`recipec.train.freezing.set_train_mode`), the augmentations, MixUp/CutMix, the training
loss (``loss:``) and ``train.amp``, the feature cache when the build would use it,
``train.grad_clip`` and ``train.accumulate``, and the recipe's optimizer (``train.compile`` and
``train.channels_last`` are left out: they change the speed, not the curve). Then one
optimizer step per lr, the lr growing exponentially from ``start_lr`` to ``end_lr`` over
``steps`` steps, every group at its planned ratio to
``optimizer.lr`` (group i of n at ``lr / lr_decay ** (n-1-i)``, ``group_lr`` scaled alike), so
the swept lr is the ``optimizer.lr`` to write into the recipe.

The loss is smoothed exponentially (``beta`` 0.98, bias-corrected, as fastai) and the test
stops early once the smoothed loss passes 4x its minimum (Lightning's rule) or is not finite.
The suggestion (:func:`suggest_lr`) is read from the smoothed curve; the result, the
suggestion and how they are printed and drawn are in :mod:`recipec.train.lrcurve`.

The model, optimizer and data loaders are throwaway: nothing is written (but the picture
asked for), no run directory is made, and the global RNG state of torch (and Python's
``random``) is restored afterwards.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch

from recipec.compiler.compile import compile_recipe
from recipec.compiler.data_config import build_data, data_config
from recipec.compiler.fit_config import head_cache, training_criterion
from recipec.data.augment import batch_mix
from recipec.data.loaders import set_epoch
from recipec.device import resolve_device
from recipec.errors import DatasetError, RecipeError
from recipec.train.cache import head_only_epochs
from recipec.train.freezing import apply_trainable, set_train_mode
from recipec.train.loop import autocast_for, aux_trains, grad_scaler, optimizer_step, training_loss
from recipec.train.lrcurve import BETA, DIVERGE, METHODS, LRFind, format_lr_find, plot_lr_find, suggest_lr
from recipec.train.optim import group_learning_rates

__all__ = ["METHODS", "LRFind", "find_lr", "format_lr_find", "plot_lr_find", "suggest_lr"]


def find_lr(recipe: Any, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            method: str = "steepest", device: str | None = None,
            log: Callable[[str], None] | None = None) -> LRFind:
    """Run the range test on ``recipe``'s epoch-0 trainable groups (see the module docstring).

    Args:
        recipe: a validated recipe (``source.recipe`` already resolved, see
            :func:`recipec.pipeline.upstream.resolve_upstream`).
        start_lr, end_lr: the range of ``optimizer.lr`` swept, exponentially.
        steps: optimizer steps (each on ``train.accumulate`` batches); fewer when the loss diverges.
        method: how the suggestion is read (:func:`suggest_lr`).
        device: overrides ``recipe.device``.
        log: called with a line when the sweep starts, then about every tenth of the steps and at the step
            that ends it (progress: ``recipec lr-find`` prints them).

    Returns:
        The curve and the suggestion.

    Raises:
        RecipecError: the recipe does not compile, or its data is not there.

    Example:
        >>> result = find_lr(load_recipe("recipes/quickstart.yaml"), steps=50)
        >>> result.suggested_lr
    """

    problems = []
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        problems.append(f"lr-find: the range must satisfy 0 < start_lr < end_lr, got {start_lr:g} .. {end_lr:g}")
    if steps < 3:
        problems.append(f"lr-find: steps must be at least 3, got {steps}")
    if method not in METHODS:
        problems.append(f"lr-find: method must be one of {', '.join(METHODS)}, got {method!r}")
    if problems:
        raise RecipeError(problems)
    target = resolve_device(device or recipe.device)
    rng_devices = [target.index if target.index is not None else torch.cuda.current_device()] \
        if target.type == "cuda" else []
    python_rng = random.getstate()
    try:
        with torch.random.fork_rng(devices=rng_devices):  # compile seeds torch; put the caller's state back
            return _range_test(recipe, target, start_lr=start_lr, end_lr=end_lr, steps=steps, method=method,
                               log=log or (lambda line: None))
    finally:
        random.setstate(python_rng)


def _range_test(recipe: Any, device: Any, *, start_lr: float, end_lr: float, steps: int, method: str,
                log: Callable[[str], None]) -> LRFind:
    log(f"loading the data and compiling {recipe.model.arch}")
    data = build_data(data_config(recipe))
    if len(data.train) == 0:
        raise DatasetError([(("data",), "the training split has no batches; lr-find needs training data")])
    compiled = compile_recipe(recipe, device=str(device), steps_per_epoch=len(data.train))
    model, optimizer, groups = compiled.model, compiled.optimizer, compiled.groups
    trainable = compiled.schedule.trainable_at(0)
    apply_trainable(model, groups, trainable)
    opt = recipe.optimizer
    base = group_learning_rates([g.name for g in groups], lr=opt.lr, lr_decay=opt.lr_decay, group_lr=opt.group_lr)
    ratios = {name: lr / opt.lr for name, lr in base.items()}
    train = recipe.train
    # the build's training loss (loss:) and MixUp/CutMix (data.mixup, data.cutmix)
    criterion = training_criterion(recipe, data, compiled.device)
    mix = batch_mix(len(data.classes), recipe.data.mixup, recipe.data.cutmix)
    # the build's head-input cache for epoch 0, when it would use one: the same numbers as full passes
    cache = head_cache(recipe, compiled, data.train, head_only_epochs(compiled.schedule, compiled.groups[-1].name, 1))
    cached = cache is not None and cache.fill(compiled.device, train.amp)
    forward = cache.head if cached and cache is not None else model
    set_train_mode(model, groups, trainable, batchnorm=recipe.freeze.batchnorm, dropout=recipe.freeze.dropout)
    log(f"sweeping optimizer.lr from {start_lr:.2e} to {end_lr:.2e} in {steps} steps, training {', '.join(trainable)}"
        f"{' on cached head inputs' if cached else ''} (on {compiled.device})")
    every = max(1, steps // 10)  # about ten progress lines, whatever --steps says
    scaler = grad_scaler(train.amp, compiled.device)
    aux_weight = recipe.model.aux_loss_weight if aux_trains(model) else 0.0

    def batches() -> Iterator[tuple[Any, Any]]:
        for epoch in range(1_000_000):  # the loader again and again, each pass ordered as that build epoch
            set_epoch(data, epoch)
            yield from (cache.batches() if cached and cache is not None else data.train)

    source = batches()
    per_step = (data.train.batch_size or 1) * train.accumulate  # examples in a full optimizer step
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    average, best, stopped = 0.0, math.inf, "end of range"
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = ratios[group["name"]] * lr
        optimizer.zero_grad(set_to_none=True)
        total, stepping = 0.0, 0  # summed loss x examples, examples in this step
        for _ in range(train.accumulate):
            x, y = next(source)
            x, y = x.to(compiled.device, non_blocking=True), y.to(compiled.device, non_blocking=True)
            if mix is not None:
                x, y = mix(x, y)
            with autocast_for(compiled.device, train.amp):
                loss = training_loss(forward(x), y, aux_weight, criterion)
            total += float(loss.item()) * len(y)
            stepping += len(y)
            if not math.isfinite(total):
                break
            scaled = loss * (len(y) / per_step)  # as build's loop: each batch weighs by its examples
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total /= max(stepping, 1)
        if not math.isfinite(total):
            stopped = "non-finite loss"
            log(f"step {step + 1}/{steps}: lr {lr:.2e}, the loss is not finite: the sweep ends here")
            break
        optimizer_step(model, optimizer, scaler, train.grad_clip, per_step / stepping)
        average = BETA * average + (1 - BETA) * total
        smoothed = average / (1 - BETA ** (step + 1))
        lrs.append(lr)
        raw.append(total)
        losses.append(smoothed)
        best = min(best, smoothed)
        if step > 0 and smoothed > DIVERGE * best:
            stopped = "diverged"
            log(f"step {step + 1}/{steps}: lr {lr:.2e}, smoothed loss {smoothed:.4f}, over {DIVERGE:g}x its minimum "
                f"({best:.4f}): the loss diverged, the sweep ends here")
            break
        if step == 0 or (step + 1) % every == 0:
            log(f"step {step + 1}/{steps}: lr {lr:.2e}, smoothed loss {smoothed:.4f}")
    index = suggest_lr(lrs, losses, method)
    suggested = lrs[index] if index is not None else None
    return LRFind(
        name=recipe.name, method=method, suggested_lr=suggested, suggested_index=index,
        group_lrs={g: ratios[g] * suggested for g in trainable} if suggested is not None else {},
        ratios={g: ratios[g] for g in trainable}, trainable_groups=list(trainable), lrs=lrs, losses=losses,
        raw_losses=raw, stopped=stopped, start_lr=start_lr, end_lr=end_lr, steps=steps,
        feature_cache=bool(cached), device=str(compiled.device))
