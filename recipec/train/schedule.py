"""Learning-rate schedules as one pure function of training progress.

``lr_factor(progress)`` multiplies each param group's initial lr, with ``progress`` the
fraction of training done (``epoch / epochs`` at the start of an epoch, ``step / total_steps``
before an optimizer step). Because the scheduler and the plan evaluate the same function at
the same progress, the plan's lr table is exactly what training will use, and because every
group is scaled from its own initial lr, the ratios between groups hold at every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from recipec.errors import RecipeError
from recipec.recipe.spec import CosineSchedulerSpec, NoSchedulerSpec, OneCycleSchedulerSpec, StepSchedulerSpec

__all__ = ["build_scheduler", "lr_factor", "lr_table", "scheduler_kwargs"]

_EPS = 1e-9  # step boundaries: 0.7 / 0.1 is 6.999999999999999 in floats, yet epoch 7 of 10 must decay 7 times


def lr_factor(
    progress: float,
    *,
    scheduler: str,
    warmup: float = 0.0,
    warmup_start: float = 0.01,
    min_factor: float = 0.0,
    step_every: float | None = None,
    gamma: float = 0.1,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    total_steps: int | None = None,
) -> float:
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
        scheduler: ``none``, ``cosine``, ``step`` or ``onecycle``.
        warmup: length of the warmup, as a fraction of training (warmup_epochs / epochs).
        warmup_start: factor at progress 0 when there is a warmup.
        min_factor: cosine only: final factor.
        step_every: step only: fraction of training between two decays (step_epochs / epochs).
        gamma: step only: decay factor.
        pct_start, div_factor, final_div_factor: onecycle only.
        total_steps: onecycle only: optimizer steps in the run, to place the phases at torch's steps.

    Raises:
        RecipeError: unknown scheduler or arguments out of range.
    """
    progress = min(max(progress, 0.0), 1.0)
    if not 0 <= warmup < 1:
        raise RecipeError(f"warmup must be a fraction of training in [0, 1), got {warmup}")
    if scheduler == "onecycle":
        if warmup:
            raise RecipeError("onecycle has its own warmup (pct_start); warmup must be 0")
        if not 0 < pct_start < 1:
            raise RecipeError(f"pct_start must be in (0, 1), got {pct_start}")
        start = 1 / div_factor
        if total_steps is not None:
            return _one_cycle_at(progress * total_steps, total_steps, pct_start, start, start / final_div_factor)
        if progress <= pct_start:
            return _cos_anneal(start, 1.0, progress / pct_start)
        return _cos_anneal(1.0, start / final_div_factor, (progress - pct_start) / (1 - pct_start))
    if scheduler == "none":
        factor = 1.0
    elif scheduler == "cosine":
        done = max(progress - warmup, 0.0) / (1 - warmup)
        factor = _cos_anneal(1.0, min_factor, done)
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


SchedulerSpecs = NoSchedulerSpec | CosineSchedulerSpec | StepSchedulerSpec | OneCycleSchedulerSpec


def scheduler_kwargs(spec: SchedulerSpecs, epochs: int, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """Flatten a recipe's ``optimizer.scheduler`` into :func:`lr_factor` keyword arguments.

    Epoch counts become fractions of training (``warmup_epochs / epochs``). With
    ``steps_per_epoch``, onecycle also gets ``total_steps`` (torch's step-exact phases).

    Raises:
        RecipeError: a warmup that fills the whole run (at ``optimizer.scheduler.warmup_epochs``).

    Example:
        >>> scheduler_kwargs(CosineSchedulerSpec(name="cosine", warmup_epochs=1), epochs=10)
        {'scheduler': 'cosine', 'warmup': 0.1, 'min_factor': 0.0}
    """
    if isinstance(spec, OneCycleSchedulerSpec):
        steps = {} if steps_per_epoch is None else {"total_steps": epochs * max(1, steps_per_epoch)}
        return {"scheduler": "onecycle", "pct_start": spec.pct_start, "div_factor": spec.div_factor,
                "final_div_factor": spec.final_div_factor, **steps}
    if isinstance(spec, NoSchedulerSpec):
        return {"scheduler": "none"}
    if spec.warmup_epochs >= epochs:
        raise RecipeError((("optimizer", "scheduler", "warmup_epochs"),
                           (f"{spec.warmup_epochs} epochs of warmup leave nothing to schedule "
                            f"(train.epochs is {epochs}); use fewer warmup epochs")))
    warmup = spec.warmup_epochs / epochs
    if isinstance(spec, CosineSchedulerSpec):
        return {"scheduler": "cosine", "warmup": warmup, "min_factor": spec.min_factor}
    return {"scheduler": "step", "warmup": warmup, "step_every": spec.step_epochs / epochs, "gamma": spec.gamma}


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, **factor_kwargs: Any) -> LambdaLR:
    """A per-optimizer-step scheduler: before step ``s`` each group's lr is ``initial_lr * lr_factor(s / total_steps)``.

    Call ``scheduler.step()`` after every ``optimizer.step()``. At the first step of epoch ``e``
    (``s = e * steps_per_epoch``) the progress is exactly ``e / epochs``, as in :func:`lr_table`.

    Args:
        optimizer: its param groups' ``initial_lr`` (or ``lr``) are the lrs scaled.
        total_steps: optimizer steps in the whole run (epochs x steps per epoch); onecycle places
            its phases at these steps, as torch's ``OneCycleLR(total_steps=...)`` does.
        **factor_kwargs: :func:`lr_factor` arguments, e.g. from :func:`scheduler_kwargs`.

    Raises:
        RecipeError: bad schedule arguments (checked now, not at the first step).
    """
    if total_steps < 1:
        raise RecipeError(f"a schedule needs at least one optimizer step, got total_steps={total_steps}")
    if factor_kwargs.get("scheduler") == "onecycle":
        factor_kwargs = {**factor_kwargs, "total_steps": total_steps}
    lr_factor(0.0, **factor_kwargs)
    return LambdaLR(optimizer, lambda step: lr_factor(step / total_steps, **factor_kwargs))


def lr_table(
    groups: Sequence[str], group_lrs: Mapping[str, float], *, epochs: int, **factor_kwargs: Any,
) -> list[list[float]]:
    """``table[group][epoch]``: each group's lr at the start of each epoch, as the scheduler sets it.

    Args:
        groups: group names, in the order of the table's rows.
        group_lrs: group name -> initial lr (from ``group_learning_rates``).
        epochs: number of epochs.
        **factor_kwargs: :func:`lr_factor` arguments.
    """
    factors = [lr_factor(epoch / epochs, **factor_kwargs) for epoch in range(epochs)]
    return [[group_lrs[group] * factor for factor in factors] for group in groups]
