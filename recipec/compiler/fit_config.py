"""Recipe -> the plain configs of training: where ``recipe.train.*``, ``recipe.freeze.*``, ``loss:`` and
``task:`` are read for the fit, so that nothing in :mod:`recipec.train` ever sees the recipe.

Each builder is named after what it builds (:func:`fit_config`, :func:`loss_config`, :func:`task_of_recipe`
...). The few steps that combine a config with live objects (:func:`craft_plan`, :func:`start_training`,
:func:`head_cache`, :func:`threshold_provenance`) take the recipe here and hand plain values down; an error
a lower layer raises with its own field keys is relabelled into the recipe's paths on the way up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from recipec.errors import RecipeError, RecipePath, relabeled
from recipec.recipe.spec import (
    CosineSchedulerSpec,
    NoSchedulerSpec,
    OneCycleSchedulerSpec,
    Recipe,
    StepSchedulerSpec,
)
from recipec.train import cache, select
from recipec.train.loop import EarlyStopping, FitConfig, Training
from recipec.train.losses import Criterion, LossConfig
from recipec.train.schedule import LrShape
from recipec.train.select import EmaConfig, SelectConfig, Selection
from recipec.train.tasks import MULTICLASS, Task, task_of

__all__ = ["FREEZE_FIELDS", "cache_config", "craft_plan", "ema_config", "fit_config", "head_cache", "loss_config",
           "lr_shape", "select_config", "start_training", "task_of_recipe", "threshold_provenance",
           "training_criterion", "training_of"]

# the arguments of recipec.train.freezing.compile_schedule -> the recipe paths they come from
FREEZE_FIELDS: Mapping[str, RecipePath] = {
    "trainable": ("freeze", "trainable"), "unfreeze": ("freeze", "unfreeze"),
    "gradual_every": ("freeze", "gradual", "every"), "gradual_start": ("freeze", "gradual", "start")}
_LOSS_FIELDS: Mapping[str, RecipePath] = {"class_weights": ("loss", "class_weights")}

SchedulerSpecs = NoSchedulerSpec | CosineSchedulerSpec | StepSchedulerSpec | OneCycleSchedulerSpec


def fit_config(recipe: Recipe) -> FitConfig:
    """The options of :func:`recipec.train.loop.fit`: ``train.*``, ``freeze.batchnorm``/``dropout`` and
    ``model.aux_loss_weight``."""
    train = recipe.train
    stopping = train.early_stopping
    return FitConfig(
        epochs=train.epochs, batchnorm=recipe.freeze.batchnorm, dropout=recipe.freeze.dropout, amp=train.amp,
        grad_clip=train.grad_clip, accumulate=train.accumulate, aux_loss_weight=recipe.model.aux_loss_weight,
        compile_mode=train.compile, channels_last=train.channels_last,
        early_stopping=None if stopping is None else EarlyStopping(
            metric=stopping.metric, patience=stopping.patience, min_delta=stopping.min_delta))


def training_of(compiled: Any, task: Task = MULTICLASS, *, criterion: Criterion | None = None, ema: Any = None,
                scaler: torch.amp.GradScaler | None = None, cache: cache.HeadCache | None = None,
                mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> Training:
    """What :func:`recipec.train.loop.fit` acts on: the compiled model, optimizer, scheduler, groups and
    schedule on its device, with the task and the optional objects (see :class:`recipec.train.loop.Training`)."""
    return Training(model=compiled.model, optimizer=compiled.optimizer, scheduler=compiled.scheduler,
                    groups=compiled.groups, schedule=compiled.schedule, device=compiled.device, task=task,
                    criterion=criterion, ema=ema, scaler=scaler, cache=cache, mix=mix)


def task_of_recipe(recipe: Recipe) -> Task:
    """``task`` with ``multilabel.threshold`` and ``multilabel.tune_thresholds``."""
    return task_of(recipe.task, threshold=recipe.multilabel.threshold,
                   tune_thresholds=recipe.multilabel.tune_thresholds)


def loss_config(recipe: Recipe) -> LossConfig:
    """``loss:`` as plain values."""
    loss = recipe.loss
    return LossConfig(label_smoothing=loss.label_smoothing, focal_gamma=None if loss.focal is None else loss.focal.gamma,
                      class_weights=loss.class_weights)


def select_config(recipe: Recipe) -> SelectConfig:
    """``train.select`` (its mode resolved) and ``export.weights``."""
    return SelectConfig(metric=recipe.train.select.metric, mode=recipe.train.select.direction,
                        export_weights=recipe.export.weights)


def ema_config(recipe: Recipe) -> EmaConfig | None:
    """``train.ema``, or None."""
    ema = recipe.train.ema
    return None if ema is None else EmaConfig(decay=ema.decay, warmup=ema.warmup, every=ema.every)


def cache_config(recipe: Recipe) -> cache.CacheConfig:
    """What decides the feature cache: ``train.feature_cache``, the augmentations, MixUp/CutMix, the frozen modes."""
    return cache.CacheConfig(enabled=recipe.train.feature_cache != "off", augment=tuple(recipe.data.augment),
                             mix=recipe.data.mixup is not None or recipe.data.cutmix is not None,
                             batchnorm=recipe.freeze.batchnorm, dropout=recipe.freeze.dropout)


def lr_shape(spec: SchedulerSpecs, epochs: int, steps_per_epoch: int | None = None) -> LrShape:
    """A recipe's ``optimizer.scheduler`` as the :class:`recipec.train.schedule.LrShape` of :func:`lr_factor`.

    Epoch counts become fractions of training (``warmup_epochs / epochs``). With
    ``steps_per_epoch``, onecycle also gets ``total_steps`` (torch's step-exact phases).

    Raises:
        RecipeError: a warmup that fills the whole run (at ``optimizer.scheduler.warmup_epochs``).

    Example:
        >>> lr_shape(CosineSchedulerSpec(name="cosine", warmup_epochs=1), epochs=10).warmup
        0.1
    """
    if isinstance(spec, OneCycleSchedulerSpec):
        steps = None if steps_per_epoch is None else epochs * max(1, steps_per_epoch)
        return LrShape(scheduler="onecycle", pct_start=spec.pct_start, div_factor=spec.div_factor,
                       final_div_factor=spec.final_div_factor, total_steps=steps)
    if isinstance(spec, NoSchedulerSpec):
        return LrShape(scheduler="none")
    if spec.warmup_epochs >= epochs:
        raise RecipeError((("optimizer", "scheduler", "warmup_epochs"),
                           (f"{spec.warmup_epochs} epochs of warmup leave nothing to schedule "
                            f"(train.epochs is {epochs}); use fewer warmup epochs")))
    warmup = spec.warmup_epochs / epochs
    if isinstance(spec, CosineSchedulerSpec):
        return LrShape(scheduler="cosine", warmup=warmup, min_factor=spec.min_factor)
    return LrShape(scheduler="step", warmup=warmup, step_every=spec.step_epochs / epochs, gamma=spec.gamma)


def craft_plan(recipe: Recipe, data: Any) -> dict[str, Any]:
    """plan.json's ``loss`` (class weights resolved against the data), ``ema``, ``select`` and ``export_weights``.

    Raises:
        RecipeError: ``loss.class_weights`` does not fit the data (at ``loss.class_weights``).
    """
    with relabeled(_LOSS_FIELDS):
        return select.craft_plan(task_of_recipe(recipe), loss_config(recipe), select_config(recipe),
                                 ema_config(recipe), data)


def training_criterion(recipe: Recipe, data: Any, device: torch.device | str) -> Criterion:
    """The criterion of ``loss:`` for ``task``, its class weights resolved against ``data`` (as :func:`craft_plan`).

    Raises:
        RecipeError: ``loss.class_weights`` does not fit the data (at ``loss.class_weights``).
    """
    task, loss = task_of_recipe(recipe), loss_config(recipe)
    with relabeled(_LOSS_FIELDS):
        planned = task.loss_plan(loss, list(data.classes), data.info.get("train_per_class"))
    return task.criterion(loss, planned, device)


def start_training(recipe: Recipe, compiled: Any, state: Mapping[str, Any] | None,
                   history: Sequence[Mapping[str, Any]], folder: Path, say: Callable[[str], None], *,
                   main: bool = True) -> tuple[Criterion, Any, Selection]:
    """The criterion, the EMA (restored on a resume) and the selection (history replayed, best.pt reconciled).

    Call after ``compiled.plan.data`` holds :func:`craft_plan` and a resumed state is restored.

    Raises:
        CheckpointError: the resumed training state's EMA is missing or does not fit the model.
    """
    criterion = task_of_recipe(recipe).criterion(loss_config(recipe), compiled.plan.data["loss"], compiled.device)
    ema = select.restore_ema(compiled.model, ema_config(recipe), state)
    rule = select_config(recipe)
    selection = Selection(rule.metric, rule.mode).replay(history)
    if state is not None and main:
        select.reconcile_best(folder, selection, done=int(state["epoch"]), model=compiled.model, ema=ema, say=say)
    return criterion, ema, selection


def head_cache(recipe: Recipe, compiled: Any, loader: DataLoader, epochs: Sequence[int], *,
               distributed: bool = False) -> cache.HeadCache | None:
    """The head-input cache a build (or lr-find) uses for ``epochs`` (:func:`recipec.train.cache.head_cache`)."""
    return cache.head_cache(compiled.model, compiled.groups, compiled.head_prefix, loader, epochs,
                            cache_config(recipe), distributed=distributed)


def threshold_provenance(recipe: Recipe, model: nn.Module, data: Any, device: torch.device) -> dict[str, Any]:
    """What the exports record of the task's decision thresholds ({} for a multiclass run)."""
    return task_of_recipe(recipe).threshold_provenance(model, data, device, recipe.train.amp)
