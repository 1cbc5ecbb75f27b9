"""Learning-rate schedules as one pure function of training progress.

``lr_factor(progress, shape)`` multiplies each param group's initial lr, with ``progress`` the
fraction of training done (``epoch / epochs`` at the start of an epoch, ``step / total_steps``
before an optimizer step). Because the scheduler and the plan evaluate the same function at
the same progress, the plan's lr table is exactly what training will use, and because every
group is scaled from its own initial lr, the ratios between groups hold at every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch.optim.lr_scheduler import LambdaLR

from recipec.errors import RecipeError

__all__ = ["LrShape", "build_scheduler", "lr_factor", "lr_table"]

_EPS = 1e-9  # step boundaries: 0.7 / 0.1 is 6.999999999999999 in floats, yet epoch 7 of 10 must decay 7 times


@dataclass(frozen=True)
class LrShape:
    """The shape of a learning-rate schedule: every :func:`lr_factor` argument but the progress.

    Attributes:
        scheduler: ``none``, ``cosine``, ``step`` or ``onecycle``.
        warmup: length of the warmup, as a fraction of training (warmup_epochs / epochs).
        warmup_start: factor at progress 0 when there is a warmup.
        min_factor: cosine only: final factor.
        step_every: step only: fraction of training between two decays (step_epochs / epochs).
        gamma: step only: decay factor.
        pct_start, div_factor, final_div_factor: onecycle only.
        total_steps: onecycle only: optimizer steps in the run, to place the phases at torch's steps.
    """

    scheduler: str
    warmup: float = 0.0
    warmup_start: float = 0.01
    min_factor: float = 0.0
    step_every: float | None = None
    gamma: float = 0.1
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    total_steps: int | None = None


def lr_factor(progress: float, shape: LrShape) -> float:
    """The lr multiplier at ``progress`` (fraction of training done, 0 to 1).

    - ``none``: 1.
    - ``cosine``: 1 at the end of warmup, cosine down to ``min_factor`` at progress 1.
    - ``step``: ``gamma ** floor(progress / step_every)`` (counted from progress 0, warmup included).
    - ``onecycle``: as torch's ``OneCycleLR`` with ``anneal_strategy="cos"``: cosine from
      ``1 / div_factor`` up to 1 at ``pct_start``, then down to ``1 / (div_factor * final_div_factor)``.
      With ``total_steps`` it is torch's schedule step for step (the lr before step ``s`` is torch's
      after ``s`` scheduler steps): the rise ends at step ``pct_start * total_steps - 1`` and the
      last step, ``total_steps - 1``, runs at the final lr. Without it, the same curve over a
      continuous progress (the limit of many steps). The momentum is not cycled.

    Warmup (none, cosine, step) ramps linearly from ``warmup_start`` at progress 0 to the
    schedule's value at ``warmup``. It starts above 0 on purpose: the first optimizer step runs at
    progress 0, and a pure function of progress cannot start at 0 without wasting that step
    (the step-based ``(step + 1) / warmup_steps`` convention would tie the plan to the batch count).

    Args:
        progress: fraction of training done; clamped to [0, 1].
        shape: the schedule (:class:`LrShape`).

    Raises:
        RecipeError: unknown scheduler or arguments out of range.
    """
    scheduler, warmup, warmup_start = shape.scheduler, shape.warmup, shape.warmup_start
    pct_start, total_steps, step_every, gamma = shape.pct_start, shape.total_steps, shape.step_every, shape.gamma
    progress = min(max(progress, 0.0), 1.0)
    if not 0 <= warmup < 1:
        raise RecipeError(f"warmup must be a fraction of training in [0, 1), got {warmup}")
    if scheduler == "onecycle":
        if warmup:
            raise RecipeError("onecycle has its own warmup (pct_start); warmup must be 0")
        if not 0 < pct_start < 1:
            raise RecipeError(f"pct_start must be in (0, 1), got {pct_start}")
        start = 1 / shape.div_factor
        if total_steps is not None:
            return _one_cycle_at(progress * total_steps, total_steps, pct_start, start, start / shape.final_div_factor)
        if progress <= pct_start:
            return _cos_anneal(start, 1.0, progress / pct_start)
        return _cos_anneal(1.0, start / shape.final_div_factor, (progress - pct_start) / (1 - pct_start))
    if scheduler == "none":
        factor = 1.0
    elif scheduler == "cosine":
        done = max(progress - warmup, 0.0) / (1 - warmup)
        factor = _cos_anneal(1.0, shape.min_factor, done)
    elif scheduler == "step":
        if step_every is None or step_every <= 0:
            raise RecipeError(f"the step scheduler needs step_every > 0, got {step_every}")
        factor = gamma ** math.floor(progress / step_every + _EPS)
    else:
        raise RecipeError(f"unknown scheduler {scheduler!r}; use none, cosine, step or onecycle")
    if progress < warmup:
        factor *= warmup_start + (1 - warmup_start) * progress / warmup
    return factor


def _one_cycle_at(step: float, total_steps: int, pct_start: float, start: float, end: float) -> float:
    # torch's OneCycleLR.get_lr (two phases): phase ends at steps pct_start * total - 1 and total - 1
    # progress * total_steps is the step up to float rounding; torch refuses steps past the last,
    # the scheduler's step after the last optimizer step keeps the final lr
    step = min(round(step), total_steps - 1)
    rise_end = float(pct_start * total_steps) - 1
    if step <= rise_end:
        return _cos_anneal(start, 1.0, step / rise_end if rise_end > 0 else 1.0)
    span = (total_steps - 1) - rise_end
    return _cos_anneal(1.0, end, (step - rise_end) / span if span > 0 else 1.0)


def _cos_anneal(start: float, end: float, done: float) -> float:
    # torch's OneCycleLR._annealing_cos: exactly `start` at 0 and `end` at 1
    return end + (start - end) / 2.0 * (math.cos(math.pi * done) + 1)


def build_scheduler(optimizer: torch.optim.Optimizer, shape: LrShape, *, total_steps: int) -> LambdaLR:
    """A per-optimizer-step scheduler: before step ``s`` each group's lr is ``initial_lr * lr_factor(s / total_steps)``.

    Call ``scheduler.step()`` after every ``optimizer.step()``. At the first step of epoch ``e``
    (``s = e * steps_per_epoch``) the progress is exactly ``e / epochs``, as in :func:`lr_table`.

    Args:
        optimizer: its param groups' ``initial_lr`` (or ``lr``) are the lrs scaled.
        shape: the schedule, e.g. from :func:`recipec.compiler.fit_config.lr_shape`.
        total_steps: optimizer steps in the whole run (epochs x steps per epoch); onecycle places
            its phases at these steps, as torch's ``OneCycleLR(total_steps=...)`` does (it replaces
            ``shape.total_steps``).

    Raises:
        RecipeError: bad schedule arguments (checked now, not at the first step).
    """
    if total_steps < 1:
        raise RecipeError(f"a schedule needs at least one optimizer step, got total_steps={total_steps}")
    if shape.scheduler == "onecycle":
        shape = replace(shape, total_steps=total_steps)
    lr_factor(0.0, shape)
    return LambdaLR(optimizer, lambda step: lr_factor(step / total_steps, shape))


def lr_table(groups: Sequence[str], group_lrs: Mapping[str, float], *, epochs: int,
             shape: LrShape) -> list[list[float]]:
    """``table[group][epoch]``: each group's lr at the start of each epoch, as the scheduler sets it.

    Args:
        groups: group names, in the order of the table's rows.
        group_lrs: group name -> initial lr (from ``group_learning_rates``).
        epochs: number of epochs.
        shape: the schedule (:class:`LrShape`).
    """
    factors = [lr_factor(epoch / epochs, shape) for epoch in range(epochs)]
    return [[group_lrs[group] * factor for factor in factors] for group in groups]
