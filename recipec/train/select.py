"""The best epoch (``train.select``) and the weights a run exports (``export.weights``).

After every epoch whose selection metric improves on every earlier epoch (strictly: a tie
keeps the earlier epoch, like ``argmax``), that epoch's weights are written atomically to
``checkpoints/best.pt``: the model's state dict, or the EMA's when the metric is an ``_ema``
one, with the epoch, metric, mode and value. It holds weights only (a tenth of a training
state with AdamW's moments): it is what gets exported, never what a run resumes from, and
``keep_last`` never rotates it away.

best.pt is written after the epoch's training state, so after a kill it is either that
state's best, or one epoch behind it (the kill fell between the two writes:
:func:`reconcile_best` rewrites it from the resumed weights), or ahead of it (an epoch
after the last training state improved: the resumed run recomputes that epoch bit for bit
and writes the same file again). Exports then read best.pt and check its epoch against the
metrics (:func:`export_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec._atomic import atomic_path
from recipec.errors import CheckpointError, RecipecError, warn
from recipec.model.heads import renamed_legacy_heads
from recipec.train.ema import Ema
from recipec.train.losses import LossConfig
from recipec.train.state_checks import verify_archive
from recipec.train.tasks import Task
from recipec.weights._pickle import load_torch

__all__ = ["BEST", "EmaConfig", "SelectConfig", "Selection", "craft_lines", "craft_plan", "export_state", "load_best",
           "reconcile_best", "restore_ema", "save_best", "select_plan"]

BEST = "best.pt"
_FORMAT = "recipec-best-weights"


@dataclass(frozen=True)
class SelectConfig:
    """``train.select`` and ``export.weights`` as plain values."""

    metric: str = "val_acc"
    mode: str = "max"
    export_weights: str = "model"


@dataclass(frozen=True)
class EmaConfig:
    """``train.ema`` as plain values (see :class:`recipec.train.ema.Ema`)."""

    decay: float
    warmup: bool = False
    every: int = 1


class Selection:
    """``train.select``: which metric, which direction, and the best epoch so far."""

    def __init__(self, metric: str = "val_acc", mode: str = "max") -> None:
        self.metric, self.mode = metric, mode
        self.epoch: int | None = None
        self.value: float | None = None

    def replay(self, history: Sequence[Mapping[str, Any]]) -> Selection:
        """Take every epoch of ``history`` (a resumed run's); return self."""
        for metrics in history:
            self.update(metrics)
        return self

    def update(self, metrics: Mapping[str, Any]) -> bool:
        """Take one epoch's metrics; True when it is the new best."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.value is not None and not (value > self.value if self.mode == "max" else value < self.value):
            return False
        self.epoch, self.value = int(metrics["epoch"]), float(value)
        return True

    @property
    def uses_ema(self) -> bool:
        return self.metric.endswith("_ema")


def save_best(folder: Path, state: Mapping[str, torch.Tensor], selection: Selection) -> Path:
    """Write ``checkpoints/best.pt`` (atomically): ``state`` on the CPU, and which epoch and why."""
    path = Path(folder) / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, "version": 1, "epoch": selection.epoch, "metric": selection.metric,
               "mode": selection.mode, "value": selection.value, "weights": "ema" if selection.uses_ema else "model",
               "model": {k: v.detach().cpu().clone() for k, v in state.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_best(folder: Path) -> dict[str, Any] | None:
    """``checkpoints/best.pt`` read back (weights only, CRC-checked), or None when it is absent or damaged."""
    path = Path(folder) / BEST
    if not path.is_file():
        return None
    try:
        verify_archive(path)
        obj, _ = load_torch(path, mmap=False)
    except (RecipecError, OSError, RuntimeError):
        return None
    if not (isinstance(obj, dict) and obj.get("format") == _FORMAT and isinstance(obj.get("model"), dict)
            and type(obj.get("epoch")) is int):
        return None
    return obj


def reconcile_best(folder: Path, selection: Selection, *, done: int, model: nn.Module, ema: Any,
                   say: Callable[[str], None]) -> None:
    """After a resume at ``done`` epochs: make best.pt hold the best epoch of the resumed history.

    When that epoch is the last one trained (``done - 1``), the resumed model (or EMA) holds its
    weights, so a best.pt that lags (a kill between the training state and best.pt) is rewritten.
    """
    if selection.epoch is None:
        return
    saved = load_best(folder)
    if saved is not None and saved["epoch"] == selection.epoch:
        return
    if saved is not None and saved["epoch"] > done - 1:
        return  # written by an epoch the resumed run is about to recompute, bit for bit
    if selection.epoch == done - 1:
        save_best(folder, ema.state if selection.uses_ema else model.state_dict(), selection)
        say(f"rewrote {Path(folder) / BEST} (epoch {selection.epoch}) from the resumed weights")
        return
    warn(f"{Path(folder) / BEST} does not hold epoch {selection.epoch}, the best so far; a later best epoch "
        "replaces it, else the run exports its last epoch")


def export_state(choice: str, *, folder: Path, selection: Selection, history: Sequence[Mapping[str, Any]],
                 model: nn.Module, ema: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict to export under ``export.weights`` and the provenance's ``selection`` entry.

    Raises:
        CheckpointError: best.pt does not fit the model.
    """
    last = history[-1] if history else {}
    entry: dict[str, Any] = {"weights": choice, "metric": selection.metric, "mode": selection.mode}
    if choice == "ema":
        return dict(ema.state), entry | {"epoch": last.get("epoch"), "value": last.get(selection.metric),
                                         "source": "the final EMA weights"}
    if choice == "model":
        if selection.epoch is None:
            why = ("no validation data (data.val_fraction 0)" if all(m.get("val_loss") is None for m in history)
                   else f"no epoch has a finite {selection.metric}")
            return model.state_dict(), entry | {"weights": "last", "epoch": last.get("epoch"), "value": None,
                                                "note": f"best fell back to the last epoch: {why}"}
        saved = load_best(folder)
        if saved is None or saved["epoch"] != selection.epoch:
            return model.state_dict(), entry | {
                "weights": "last", "epoch": last.get("epoch"), "value": last.get(selection.metric),
                "note": f"best fell back to the last epoch: {folder / BEST} does not hold epoch {selection.epoch}"}
        state = renamed_legacy_heads(saved["model"], model)  # best.pt of an earlier version: fc.1.weight -> fc.weight
        expected = model.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise CheckpointError(f"{folder / BEST}: does not fit the model (other keys or shapes)")
        return state, entry | {"epoch": selection.epoch, "value": selection.value,
                               "source": "the EMA weights of that epoch" if selection.uses_ema else "the model"}
    return model.state_dict(), entry | {"epoch": last.get("epoch"), "value": last.get(selection.metric)}


def select_plan(select: SelectConfig, ema: EmaConfig | None) -> dict[str, Any]:
    """What plan.json records of EMA, the selection rule and the exported weights."""
    return {
        "ema": None if ema is None else {"decay": ema.decay, "warmup": ema.warmup, "every": ema.every},
        "select": {"metric": select.metric, "mode": select.mode},
        "export_weights": select.export_weights,
    }


def craft_plan(task: Task, loss: LossConfig, select: SelectConfig, ema: EmaConfig | None,
               data: Any) -> dict[str, Any]:
    """plan.json's ``loss`` (class weights resolved against the data), ``ema``, ``select`` and ``export_weights``.

    Raises:
        RecipeError: the class weights do not fit the data (at the field ``class_weights``).
    """
    return ({"loss": task.loss_plan(loss, list(data.classes), data.info.get("train_per_class"))}
            | select_plan(select, ema))


def restore_ema(model: nn.Module, config: EmaConfig | None, state: Mapping[str, Any] | None) -> Ema | None:
    """The EMA of ``model`` (None without ``config``), restored from a resumed training ``state``.

    Raises:
        CheckpointError: the resumed training state's EMA is missing or does not fit the model.
    """
    if config is None:
        return None
    ema = Ema(model, decay=config.decay, warmup=config.warmup, every=config.every)
    if state is not None:
        saved = (state.get("extra") or {}).get("ema")
        try:
            if not isinstance(saved, Mapping):
                raise ValueError("it holds no EMA")
            if isinstance(saved.get("state"), Mapping):  # a run of an earlier version: fc.1.weight -> fc.weight
                saved = {**saved, "state": renamed_legacy_heads(saved["state"], model)}
            ema.load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"training state: field 'extra.ema' cannot be restored ({exc}); resume from "
                                  "an older checkpoint or start a new run") from exc
    return ema


def craft_lines(plan: Mapping[str, Any]) -> list[str]:
    """The plan's text lines for the loss, EMA and selection (``recipec plan``)."""
    lines = []
    loss = plan.get("loss")
    if loss:
        parts = ["focal (gamma {:g})".format(loss["focal_gamma"]) if loss["name"] == "focal" else
                 "binary cross-entropy, a sigmoid per class" if loss["name"] == "bce" else "cross-entropy"]
        if loss["label_smoothing"]:
            parts.append(f"label smoothing {loss['label_smoothing']:g}")
        weights = loss.get("class_weights")
        if weights:
            shown = ", ".join(f"{c}={w:.3g}" for c, w in list(weights.items())[:8]) + (", ..." if len(weights) > 8 else "")
            auto = " (auto: n / (C * n_c))" if str(loss.get("class_weights_from", "")).startswith("auto") else ""
            parts.append(f"class weights{auto} {shown}")
        lines.append(f"loss      {'; '.join(parts)}; val_loss is {loss.get('validation', 'plain cross-entropy')}")
    ema = plan.get("ema")
    if ema:
        warm = " with warmup min(decay, (1 + t) / (10 + t))" if ema["warmup"] else ""
        every = f" every {ema['every']} optimizer steps" if ema["every"] > 1 else " after every optimizer step"
        lines.append(f"ema       decay {ema['decay']:g}{warm},{every}; validated as val_loss_ema, val_acc_ema")
    select = plan.get("select")
    if select:
        lines.append(f"select    best epoch by {select['metric']} ({select['mode']}) -> checkpoints/best.pt; "
                     f"exports: {plan.get('export_weights', 'model')} weights")
    return lines
