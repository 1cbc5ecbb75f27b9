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
The suggestion (:func:`suggest_lr`) is read from the smoothed curve.

The model, optimizer and data loaders are throwaway: nothing is written (but the picture
asked for), no run directory is made, and the global RNG state of torch (and Python's
``random``) is restored afterwards.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["METHODS", "LRFind", "find_lr", "format_lr_find", "plot_lr_find", "suggest_lr"]

METHODS = ("steepest", "valley", "minimum")
BETA = 0.98
DIVERGE = 4.0


@dataclass
class LRFind:
    """The result of a range test.

    Attributes:
        name: the recipe's name.
        method: how ``suggested_lr`` was read from the curve (:data:`METHODS`).
        suggested_lr: the suggested ``optimizer.lr``; None when the curve has too few points.
        suggested_index: its index in ``lrs``.
        group_lrs: group -> its lr at the suggestion (the epoch-0 trainable groups).
        ratios: group -> its lr divided by ``optimizer.lr`` (the discriminative ratios kept).
        trainable_groups: the groups trainable at epoch 0, the ones the test trains.
        lrs: ``optimizer.lr`` of every step taken.
        losses: the smoothed (bias-corrected) training loss at every step.
        raw_losses: the loss of every step as computed.
        stopped: why the test ended: ``end of range``, ``diverged`` (4x the best smoothed loss)
            or ``non-finite loss``.
    """

    name: str
    method: str
    suggested_lr: float | None
    suggested_index: int | None
    group_lrs: dict[str, float]
    ratios: dict[str, float]
    trainable_groups: list[str]
    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    stopped: str
    start_lr: float
    end_lr: float
    steps: int
    beta: float = BETA
    feature_cache: bool = False
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def suggest_lr(lrs: list[float], losses: list[float], method: str = "steepest") -> int | None:
    """The index of the suggested lr on a range-test curve, or None when there are too few points.

    The first tenth of the points (at least one) and the last point are left out, as fastai
    and Lightning do: the start is dominated by smoothing warm-up, the end by divergence.

    - ``steepest`` (the default; Lightning's ``suggestion``): the lr where the smoothed loss falls
      fastest, the most negative slope ``d loss / d log10(lr)`` (``numpy.gradient``).
    - ``valley`` (fastai's default ``valley``): the longest valley, the longest decreasing
      subsequence of the curve from ``start`` to ``end``, and the point about 2/3 of the way down
      it: ``start + int((end - start) / 3) + int((end - start) / 6)``, fastai's formula.
    - ``minimum`` (fastai's ``minimum``): the lr at the lowest loss, divided by 10; the index is
      the point closest to that lr on a log scale.

    Args:
        lrs: increasing learning rates, one per step.
        losses: the smoothed loss at each.
        method: one of :data:`METHODS`.

    Returns:
        An index into ``lrs``, or None.

    Example:
        >>> lrs = [10 ** (-6 + i / 10) for i in range(60)]
        >>> losses = [2.0 - math.tanh(i / 10 - 3) for i in range(60)]   # falls fastest at i = 30
        >>> suggest_lr(lrs, losses)
        30
    """
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    n = len(lrs)
    begin, end = max(1, n // 10), n - 1
    finite: list[int] = []  # the points before the first non-finite one
    for i in range(begin, end):
        if not (math.isfinite(losses[i]) and lrs[i] > 0):
            break
        finite.append(i)
    if len(finite) < 3:
        return None
    x = np.log10(np.asarray([lrs[i] for i in finite], dtype=float))
    y = np.asarray([losses[i] for i in finite], dtype=float)
    if method == "steepest":
        return finite[int(np.argmin(np.gradient(y, x)))]
    if method == "minimum":
        target = x[int(np.argmin(y))] - 1.0  # a tenth of the lr at the minimum
        return finite[int(np.argmin(np.abs(x - target)))]
    # valley: fastai's O(n^2) longest decreasing subsequence, then 2/3 of the way down
    m = len(y)
    lds, max_start, max_end = [1] * m, 0, 0
    for i in range(1, m):
        for j in range(i):
            if y[i] < y[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return finite[min(m - 1, max_start + int(sections) + int(sections / 2))]


def find_lr(recipe: Any, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            method: str = "steepest", device: str | None = None,
            log: Callable[[str], None] | None = None) -> LRFind:
    """Run the range test on ``recipe``'s epoch-0 trainable groups (see the module docstring).

    Args:
        recipe: a validated recipe (``source.recipe`` already resolved, see
            :func:`recipec.build.resolve_upstream`).
        start_lr, end_lr: the range of ``optimizer.lr`` swept, exponentially.
        steps: optimizer steps (each on ``train.accumulate`` batches); fewer when the loss diverges.
        method: how the suggestion is read (:func:`suggest_lr`).
        device: overrides ``recipe.device``.
        log: called with a line now and then (progress).

    Returns:
        The curve and the suggestion.

    Raises:
        RecipecError: the recipe does not compile, or its data is not there.

    Example:
        >>> result = find_lr(load_recipe("recipes/quickstart.yaml"), steps=50)
        >>> result.suggested_lr
    """
    import torch

    from recipec.errors import RecipeError

    problems = []
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        problems.append(f"lr-find: the range must satisfy 0 < start_lr < end_lr, got {start_lr:g} .. {end_lr:g}")
    if steps < 3:
        problems.append(f"lr-find: steps must be at least 3, got {steps}")
    if method not in METHODS:
        problems.append(f"lr-find: method must be one of {', '.join(METHODS)}, got {method!r}")
    if problems:
        raise RecipeError(problems)
    from recipec.device import resolve_device

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
    import torch

    from recipec.compiler import compile_recipe, data_kwargs
    from recipec.errors import DatasetError
    from recipec.train.augment import batch_mix
    from recipec.train.data import build_data, set_epoch
    from recipec.train.freezing import apply_trainable, set_train_mode
    from recipec.train.loop import autocast_for, aux_trains, grad_scaler, training_loss
    from recipec.train.losses import criterion_of, loss_plan
    from recipec.train.optim import group_learning_rates

    data = build_data(**data_kwargs(recipe))
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
    criterion = criterion_of(recipe, {"loss": loss_plan(recipe, data.classes, data.info.get("train_per_class"))},
                             compiled.device)
    mix = batch_mix(len(data.classes), recipe.data.mixup, recipe.data.cutmix)
    from recipec.train.cache import head_cache, head_only_epochs

    # the build's head-input cache for epoch 0, when it would use one: the same numbers as full passes
    cache = head_cache(recipe, compiled, data.train, head_only_epochs(compiled.schedule, compiled.groups[-1].name, 1))
    cached = cache is not None and cache.fill(compiled.device, train.amp)
    forward = cache.head if cached and cache is not None else model
    set_train_mode(model, groups, trainable, batchnorm=recipe.freeze.batchnorm, dropout=recipe.freeze.dropout)
    scaler = grad_scaler(train.amp, compiled.device)
    aux_weight = recipe.model.aux_loss_weight if aux_trains(model) else 0.0

    def batches() -> Iterator[tuple[Any, Any]]:
        for epoch in range(1_000_000):  # the loader again and again, each pass ordered as that build epoch
            set_epoch(data, epoch)
            yield from (cache.batches() if cached and cache is not None else data.train)

    source = batches()
    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    average, best, stopped = 0.0, math.inf, "end of range"
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = ratios[group["name"]] * lr
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(train.accumulate):
            x, y = next(source)
            x, y = x.to(compiled.device, non_blocking=True), y.to(compiled.device, non_blocking=True)
            if mix is not None:
                x, y = mix(x, y)
            with autocast_for(compiled.device, train.amp):
                loss = training_loss(forward(x), y, aux_weight, criterion)
            total += float(loss.item()) / train.accumulate
            if not math.isfinite(total):
                break
            scaled = loss / train.accumulate
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if not math.isfinite(total):
            stopped = "non-finite loss"
            break
        if scaler is not None:
            scaler.unscale_(optimizer)
        if train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        average = BETA * average + (1 - BETA) * total
        smoothed = average / (1 - BETA ** (step + 1))
        lrs.append(lr)
        raw.append(total)
        losses.append(smoothed)
        best = min(best, smoothed)
        if step % 10 == 0:
            log(f"step {step + 1}/{steps}: lr {lr:.2e}, smoothed loss {smoothed:.4f}")
        if step > 0 and smoothed > DIVERGE * best:
            stopped = "diverged"
            break
    index = suggest_lr(lrs, losses, method)
    suggested = lrs[index] if index is not None else None
    return LRFind(
        name=recipe.name, method=method, suggested_lr=suggested, suggested_index=index,
        group_lrs={g: ratios[g] * suggested for g in trainable} if suggested is not None else {},
        ratios={g: ratios[g] for g in trainable}, trainable_groups=list(trainable), lrs=lrs, losses=losses,
        raw_losses=raw, stopped=stopped, start_lr=start_lr, end_lr=end_lr, steps=steps,
        feature_cache=bool(cached), device=str(compiled.device))


def format_lr_find(result: LRFind, recipe_path: str = "RECIPE") -> str:
    """The text ``recipec lr-find`` prints: the curve at about a dozen points, then the suggestion."""
    lines = [f"lr-find: {result.name}  (on {result.device}; trains {', '.join(result.trainable_groups)} as at epoch 0"
             f"{', on cached head inputs' if result.feature_cache else ''})",
             f"{len(result.lrs)} of {result.steps} steps, optimizer.lr from {result.start_lr:.2e} to "
             f"{result.end_lr:.2e}; stopped: {result.stopped}", "",
             f"  {'optimizer.lr':>12}  {'loss':>9}  {'smoothed':>9}"]
    n = len(result.lrs)
    shown = sorted({round(i * (n - 1) / 11) for i in range(12)} | (
        {result.suggested_index} if result.suggested_index is not None else set())) if n else []
    for i in shown:
        mark = "  <- suggested" if i == result.suggested_index else ""
        lines.append(f"  {result.lrs[i]:>12.2e}  {result.raw_losses[i]:>9.4f}  {result.losses[i]:>9.4f}{mark}")
    lines.append("")
    if result.suggested_lr is None:
        lines.append("no suggestion: too few steps before the loss diverged; lower --start-lr or raise --steps")
        return "\n".join(lines)
    how = {"steepest": "where the smoothed loss falls fastest",
           "valley": "fastai's valley: 2/3 down the longest descent",
           "minimum": "a tenth of the lr at the lowest smoothed loss"}[result.method]
    lines.append(f"suggested optimizer.lr: {result.suggested_lr:.2e}  ({result.method}: {how})")
    lines.append("  per group: " + ", ".join(f"{g} {lr:.2e}" for g, lr in result.group_lrs.items()))
    lines.append(f"  recipec build {recipe_path} --set optimizer.lr={result.suggested_lr:.2e}")
    return "\n".join(lines)


def plot_lr_find(result: LRFind, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Draw the curve (log-scale lr) with the suggestion marked, as a PNG (atomic).

    Returns:
        What was drawn: ``{"x": lrs, "y": smoothed losses, "marked": suggested lr or None, "xscale": "log"}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from recipec._atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        ax.plot(result.lrs, result.raw_losses, color="0.75", linewidth=0.8, label="loss per step")
        (curve,) = ax.plot(result.lrs, result.losses, color="tab:blue", label=f"smoothed (beta {result.beta:g})")
        marked = None
        if result.suggested_index is not None and result.suggested_lr is not None:
            marked = result.suggested_lr
            ax.axvline(marked, color="tab:red", linestyle="--", linewidth=1)
            ax.plot([marked], [result.losses[result.suggested_index]], "o", color="tab:red",
                    label=f"suggested {marked:.2e} ({result.method})")
        ax.set_xscale("log")
        finite = [v for v in result.losses if math.isfinite(v)]
        if finite:  # the raw losses of the last, diverging steps would squash the curve
            low, high = min(finite + [v for v in result.raw_losses if math.isfinite(v)]), max(finite)
            ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.15 * (high - low + 1e-12))
        ax.set_xlabel("optimizer.lr (the last group's; the others keep their ratios)")
        ax.set_ylabel("training loss")
        ax.set_title(f"lr-find: {result.name}  (trains {', '.join(result.trainable_groups)})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        return {"x": np.asarray(curve.get_xdata(), dtype=float).tolist(),
                "y": np.asarray(curve.get_ydata(), dtype=float).tolist(),
                "marked": marked, "xscale": ax.get_xscale()}
    finally:
        plt.close(fig)
