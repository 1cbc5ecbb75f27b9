"""The fit loop: one function that reads top to bottom, no trainer class.

Per epoch: set which groups train (the freezing schedule), make the batch order a pure
function of (seed, epoch), put the model in train mode with BatchNorm of frozen groups
kept in eval mode, step the optimizer and the per-step scheduler, validate, and hand the
epoch's metrics to ``on_epoch_end`` (which writes metrics and checkpoints). Every group is
in the optimizer from the start, so unfreezing changes nothing but ``requires_grad``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recipec.errors import RunError
from recipec.model.heads import aux_classifiers
from recipec.train.cache import HeadCache
from recipec.train.data import Data, set_epoch
from recipec.train.distributed import World, all_sum, average_gradients, broadcast_buffers
from recipec.train.freezing import FreezeSchedule, apply_trainable, set_train_mode

__all__ = ["EarlyStopping", "evaluate", "fit", "grad_scaler", "group_lrs"]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    metric: str = "val_acc"
    patience: int = 3
    min_delta: float = 0.0


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Layer group name -> its current lr (a group's decay and no-decay halves share it)."""
    lrs: dict[str, float] = {}
    for pg in optimizer.param_groups:
        lrs.setdefault(pg["name"], float(pg["lr"]))
    return lrs


def fit(*, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, groups: Sequence[Any],
        schedule: FreezeSchedule, data: Data, device: torch.device, epochs: int, start_epoch: int = 0,
        batchnorm: str = "frozen", dropout: str = "frozen", amp: str = "none", grad_clip: float | None = None,
        accumulate: int = 1,
        early_stopping: EarlyStopping | None = None, history: Sequence[dict[str, Any]] = (),
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None, world: World | None = None,
        cache: HeadCache | None = None, scaler: torch.amp.GradScaler | None = None,
        aux_loss_weight: float = 0.4) -> list[dict[str, Any]]:
    """Train from ``start_epoch`` to ``epochs``; return the metrics of every epoch (``history`` included).

    With several processes (``world``), each trains on its shard, gradients are averaged
    after every backward, and losses are summed over ranks before they are reported.
    With a ``cache``, its epochs train the head on cached inputs of the frozen prefix.
    Auxiliary classifiers (googlenet, inception_v3) add ``aux_loss_weight`` x their loss while they train.
    ``scaler``: the fp16 loss scaler (default: :func:`grad_scaler`); pass it to save and restore
    its state with the training state, so an fp16 resume is exact.

    Raises:
        RunError: the loss became NaN or infinite (exit 1; the last checkpoint stays intact).
    """
    history = list(history)
    world = world or World()
    scaler = scaler if scaler is not None else grad_scaler(amp, device)
    best, stale = _early_stopping_state(history, early_stopping)
    if history and history[-1].get("early_stopped"):
        return history  # a resumed run that had already stopped early: nothing is left to train
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        trainable = schedule.trainable_at(epoch)
        apply_trainable(model, groups, trainable)
        set_epoch(data, epoch)
        lrs_at_start = group_lrs(optimizer)
        set_train_mode(model, groups, trainable, batchnorm=batchnorm, dropout=dropout)

        total_loss, seen = 0.0, 0
        batches = len(data.train)
        cached = cache is not None and epoch in cache.epochs and cache.fill(device, amp)
        forward = cache.head if cached and cache is not None else model
        aux_weight = aux_loss_weight if _aux_trains(model) else 0.0
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(cache.batches() if cached and cache is not None else data.train):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                loss = _loss(forward(x), y, aux_weight)
            if not torch.isfinite(loss):
                raise RunError(f"epoch {epoch}, batch {i}: the loss is {loss.item()}; lower optimizer.lr, "
                               "set train.grad_clip, or check the data")
            total_loss += loss.item() * len(y)
            seen += len(y)
            scaled = loss / accumulate
            (scaler.scale(scaled) if scaler else scaled).backward()
            if (i + 1) % accumulate == 0 or i + 1 == batches:
                average_gradients(model, world)
                _optimizer_step(model, optimizer, scaler, grad_clip)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

        total_loss, summed = all_sum([total_loss, seen], world)
        seen = int(summed)
        broadcast_buffers(model, world)  # every rank validates and saves the same model
        val_loss, val_acc = evaluate(model, data.val, device, amp) if data.val is not None else (None, None)
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lrs_at_start,
            "trainable_groups": list(trainable),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "feature_cache": cached,
            **({"feature_cache_refused": cache.refused} if cache is not None and cache.refused else {}),
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(metrics)
        stop = False
        if early_stopping is not None:
            best, stale = _update_early_stopping(best, stale, metrics, early_stopping)
            stop = stale >= early_stopping.patience
            metrics["early_stopped"] = stop
        if on_epoch_end is not None:
            on_epoch_end(metrics)
        if stop:
            break
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none") -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader``, in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with _autocast(device, amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler an ``amp`` run needs on ``device``: fp16 on CUDA only (bf16 and CPU fp16 need none)."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None


def _loss(output: Any, y: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Cross-entropy of the logits; with auxiliary outputs (googlenet's and inception_v3's named
    tuples in training mode: main logits first), plus ``aux_weight`` x that of each of them."""
    if isinstance(output, torch.Tensor):
        return F.cross_entropy(output, y)
    main, *aux = output
    loss = F.cross_entropy(main, y)
    for logits in aux:
        if logits is not None and aux_weight:
            loss = loss + aux_weight * F.cross_entropy(logits, y)
    return loss


def _aux_trains(model: nn.Module) -> bool:
    # auxiliary classifiers count only while they train: a frozen one (e.g. fresh, in a frozen
    # group) would push the trainable body with gradients through its random weights
    aux = [p for module in aux_classifiers(model).values() for p in module.parameters()]
    return bool(aux) and all(p.requires_grad for p in aux)


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, grad_clip: float | None) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _early_stopping_state(history: Sequence[dict[str, Any]], rule: EarlyStopping | None) -> tuple[float | None, int]:
    """Replay the history so a resumed run stops exactly where an uninterrupted one would."""
    best: float | None = None
    stale = 0
    if rule is not None:
        for metrics in history:
            best, stale = _update_early_stopping(best, stale, metrics, rule)
    return best, stale


def _update_early_stopping(best: float | None, stale: int, metrics: dict[str, Any],
                           rule: EarlyStopping) -> tuple[float | None, int]:
    value = metrics.get(rule.metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best, stale + 1
    sign = 1.0 if rule.metric == "val_acc" else -1.0  # accuracy goes up, loss goes down
    if best is None or sign * (value - best) > rule.min_delta:
        return value, 0
    return best, stale + 1

