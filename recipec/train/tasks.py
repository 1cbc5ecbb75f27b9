"""What is learned: one class per image (``multiclass``) or any number (``multilabel``), in one place.

A :class:`Task` knows everything that differs between the two: the training loss and what plan.json
records of it, how an epoch is validated (the metric names), the metric ``train.select`` picks by
default, what the exports record of the decision thresholds, and ``recipec eval``'s results. The
rest of recipec asks the task instead of testing ``task == "multilabel"``.

``multiclass``: softmax over the classes, cross-entropy (:mod:`recipec.train.losses`), validated by
:func:`recipec.train.loop.evaluate` (loss, accuracy, each class's accuracy).
``multilabel``: a sigmoid per class, binary cross-entropy, mAP and F1 at ``threshold``
(:mod:`recipec.train.multilabel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from recipec.train import loop, multilabel
from recipec.train.losses import Criterion, LossConfig, criterion_of, loss_plan

__all__ = ["MULTICLASS", "MULTILABEL", "Multiclass", "Multilabel", "Task", "task_of"]


class Task(Protocol):
    """What differs between the tasks; see the module docstring."""

    @property
    def name(self) -> str:
        """``multiclass`` or ``multilabel`` (the recipe's ``task``)."""
        ...

    @property
    def metrics(self) -> tuple[str, ...]:
        """The validation metrics each epoch records (each again with ``_ema`` under ``train.ema``)."""
        ...

    @property
    def default_metric(self) -> str:
        """The metric ``train.select`` picks the best epoch by unless the recipe names one."""
        ...

    def loss_plan(self, loss: LossConfig, classes: Sequence[str],
                  train_per_class: Mapping[str, int] | None) -> dict[str, Any]:
        """What plan.json records of the training loss (class weights resolved against the data)."""
        ...

    def criterion(self, loss: LossConfig, planned: Mapping[str, Any], device: torch.device | str) -> Criterion:
        """The training criterion ``(logits, target) -> loss``, as ``planned`` (:meth:`loss_plan`) resolved it."""
        ...

    def validate(self, model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        """One epoch's validation metrics on ``data.val`` (``val_loss`` and ``val_acc`` first), ``ema``'s too."""
        ...

    def threshold_provenance(self, model: nn.Module, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        """What the exports' provenance records of the decision thresholds ({} when there are none)."""
        ...


@dataclass(frozen=True)
class Multiclass:
    """One class per image: softmax, cross-entropy, accuracy."""

    name: str = "multiclass"
    metrics: tuple[str, ...] = ("val_loss", "val_acc")
    default_metric: str = "val_acc"

    def loss_plan(self, loss: LossConfig, classes: Sequence[str],
                  train_per_class: Mapping[str, int] | None) -> dict[str, Any]:
        return loss_plan(loss, classes, train_per_class)

    def criterion(self, loss: LossConfig, planned: Mapping[str, Any], device: torch.device | str) -> Criterion:
        return criterion_of(loss, planned, device)

    def validate(self, model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        # loop.evaluate looked up at call time: a test that wraps it sees every validation
        val_loss, val_acc, per_class = loop.evaluate(model, data.val, device, amp, classes=data.classes)
        out: dict[str, Any] = {"val_loss": val_loss, "val_acc": val_acc, "val_per_class_acc": per_class}
        if ema is not None:
            ema.copy_buffers(model)  # the broadcast ones: every rank validates the same EMA
            out["val_loss_ema"], out["val_acc_ema"] = loop.evaluate(ema.module(model), data.val, device, amp)
        return out

    def threshold_provenance(self, model: nn.Module, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Multilabel:
    """Any number of classes per image: a sigmoid per class, binary cross-entropy, mAP and F1.

    Attributes:
        threshold: a class is predicted when its sigmoid score is at least this (``multilabel.threshold``).
        tune_thresholds: after training, tune each class's threshold on val for the exports.
    """

    threshold: float = 0.5
    tune_thresholds: bool = False
    name: str = "multilabel"
    metrics: tuple[str, ...] = multilabel.METRICS
    default_metric: str = "val_map"

    def loss_plan(self, loss: LossConfig, classes: Sequence[str],
                  train_per_class: Mapping[str, int] | None) -> dict[str, Any]:
        return multilabel.loss_plan(loss.label_smoothing, self.threshold)

    def criterion(self, loss: LossConfig, planned: Mapping[str, Any], device: torch.device | str) -> Criterion:
        return multilabel.bce_criterion(loss.label_smoothing)  # binary cross-entropy per class

    def validate(self, model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        # BCE, exact match, mAP, F1 (and their _ema); looked up at call time, as loop.evaluate above
        return multilabel.validation_metrics(model, ema, data, device, amp, self.threshold)

    def threshold_provenance(self, model: nn.Module, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        return multilabel.threshold_provenance(model, data, device, threshold=self.threshold,
                                               tune=self.tune_thresholds, amp=amp)


MULTICLASS = Multiclass()
MULTILABEL = Multilabel()


def task_of(name: str, *, threshold: float = 0.5, tune_thresholds: bool = False) -> Task:
    """The task named ``name`` (``multiclass`` or ``multilabel``); the thresholds are multilabel's.

    Raises:
        ValueError: another name (the recipe's schema allows only these two).
    """
    if name == "multiclass":
        return MULTICLASS
    if name == "multilabel":
        return Multilabel(threshold=threshold, tune_thresholds=tune_thresholds)
    raise ValueError(f"unknown task {name!r}; use multiclass or multilabel")
