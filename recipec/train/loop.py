"""The fit loop: one function that reads top to bottom, no trainer class.

Per epoch: set which groups train (the freezing schedule), make the batch order a pure
function of (seed, epoch), put the model in train mode with BatchNorm of frozen groups
kept in eval mode, step the optimizer and the per-step scheduler, validate, and hand the
epoch's metrics to ``on_epoch_end`` (which writes metrics and checkpoints). Every group is
in the optimizer from the start, so unfreezing changes nothing but ``requires_grad``.

What a fit acts on arrives as one :class:`Training` (the model and the objects that change it),
its options as one :class:`FitConfig` of plain values; the compiler builds both from the recipe
(:mod:`recipec.compiler.fit_config`). How the epoch is validated is the task's business
(:mod:`recipec.train.tasks`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

import torch
import torch.nn.functional as F
from torch import nn

from recipec.data.loaders import Data, set_epoch
from recipec.train.speed import compile_forward, compiles_so_far, to_channels_last
from recipec.errors import RunError
from recipec.model.groups import LayerGroup
from recipec.model.heads import aux_classifiers
from recipec.train.cache import HeadCache
from recipec.train.distributed import World, all_sum, average_gradients, broadcast_buffers
from recipec.train.freezing import FreezeSchedule, apply_trainable, set_train_mode

__all__ = ["EarlyStopping", "FitConfig", "Training", "Validation", "autocast_for", "aux_trains", "evaluate", "fit", "grad_scaler",
           "group_lrs", "optimizer_step", "training_loss"]


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    metric: str = "val_acc"
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class FitConfig:
    """The plain options of a fit.

    Attributes:
        epochs: the run's epochs (a resumed run starts later, never ends elsewhere).
        batchnorm, dropout: ``frozen`` or ``train``: the mode of the frozen groups' BatchNorm and of their
            other train-mode-dependent modules (:func:`recipec.train.freezing.set_train_mode`).
        amp: ``none``, ``bf16`` or ``fp16``.
        grad_clip: max norm of the gradient each optimizer step takes (fp16: once unscaled), or None.
        accumulate: batches per optimizer step. A step's gradient is that of the mean loss over its examples,
            as one batch of ``batch_size x accumulate`` would give; so is the epoch's last step, which may hold
            fewer batches, the last of them short.
        aux_loss_weight: auxiliary classifiers (googlenet, inception_v3) add this x their loss while they train.
        compile_mode: torch.compile the training forward (True or a mode name), counting each epoch's
            (re)compiles in its metrics (``compiles``).
        channels_last: model and 4-d inputs in NHWC (:mod:`recipec.train.speed`).
        early_stopping: the rule, or None.
    """

    epochs: int
    batchnorm: str = "frozen"
    dropout: str = "frozen"
    amp: str = "none"
    grad_clip: float | None = None
    accumulate: int = 1
    aux_loss_weight: float = 0.4
    compile_mode: bool | str = False
    channels_last: bool = False
    early_stopping: EarlyStopping | None = None


class Validation(Protocol):
    """What the loop needs of a task (:class:`recipec.train.tasks.Task`, which validates with :func:`evaluate`
    of this module: the loop declares the interface, the tasks import the loop, never the reverse)."""

    def validate(self, model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str) -> dict[str, Any]:
        """One epoch's validation metrics on ``data.val`` (``val_loss`` and ``val_acc`` first), ``ema``'s too."""
        ...


@dataclass
class Training:
    """What a fit acts on: the model and everything that changes it.

    Attributes:
        model, optimizer, scheduler: the scheduler steps after every optimizer step.
        groups, schedule: the layer groups and which of them train at each epoch.
        device: where the batches go.
        task: how the training targets are read and each epoch validated (:func:`recipec.train.tasks.task_of`).
        criterion: ``criterion(logits, target)``, the training loss (None: cross-entropy;
            see :mod:`recipec.train.losses`).
        ema: a :class:`recipec.train.ema.Ema`, stepped after every optimizer step and validated every epoch.
        scaler: the fp16 loss scaler (None: :func:`grad_scaler`); pass it to save and restore its state with
            the training state, so an fp16 resume is exact.
        cache: the head-input cache (:mod:`recipec.train.cache`): its epochs train the head on cached inputs.
        mix: ``mix(x, y)``, MixUp/CutMix of each training batch (:class:`recipec.data.augment.BatchMix`), giving
            soft targets (N, C) that the criterion takes as it takes class indices; validation is never mixed.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    groups: Sequence[LayerGroup]
    schedule: FreezeSchedule
    device: torch.device
    task: Validation
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ema: Any = None
    scaler: torch.amp.GradScaler | None = None
    cache: HeadCache | None = None
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Layer group name -> its current lr (a group's decay and no-decay halves share it)."""
    lrs: dict[str, float] = {}
    for pg in optimizer.param_groups:
        lrs.setdefault(pg["name"], float(pg["lr"]))
    return lrs


def fit(training: Training, data: Data, config: FitConfig, *, start_epoch: int = 0,
        history: Sequence[dict[str, Any]] = (), world: World | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_batch: Callable[[int, int, torch.Tensor], None] | None = None) -> list[dict[str, Any]]:
    """Train from ``start_epoch`` to ``config.epochs``; return the metrics of every epoch (``history`` included).

    With several processes (``world``), each trains on its shard, gradients are averaged
    after every backward, and losses are summed over ranks before they are reported.
    ``on_epoch_end(metrics)`` is called after each epoch; ``on_batch(i, batches, loss)`` after each training
    batch with the batch's loss, detached and on the device (reading it is a host sync: a progress display
    reads it a few times a second at most). Neither ``compile_mode`` nor ``channels_last`` changes what is
    saved: the state dict is the model's.

    Example:
        >>> config = FitConfig(epochs=3, amp="bf16")
        >>> history = fit(Training(model, optimizer, scheduler, groups, schedule, device, MULTICLASS), data, config)

    Raises:
        RunError: the loss became NaN or infinite (exit 1; the last checkpoint stays intact).
    """
    model, optimizer, groups, schedule = training.model, training.optimizer, training.groups, training.schedule
    device, cache, ema, amp = training.device, training.cache, training.ema, config.amp
    criterion = training.criterion or F.cross_entropy
    history = list(history)
    world = world or World()
    scaler = training.scaler if training.scaler is not None else grad_scaler(amp, device)
    best, stale = _early_stopping_state(history, config.early_stopping)
    if history and history[-1].get("early_stopped"):
        return history  # a resumed run that had already stopped early: nothing is left to train
    if config.channels_last:
        to_channels_last(model)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    full = data.train.batch_size
    per_step = (full or 1) * config.accumulate  # examples in a full optimizer step
    compiling = config.compile_mode is not False
    phases = len({schedule.trainable_at(e) for e in range(start_epoch, config.epochs)}) if compiling else 0
    compiled = compile_forward(model, config.compile_mode, phases=phases)
    for epoch in range(start_epoch, config.epochs):
        compiles = compiles_so_far() if compiling else 0
        started = time.perf_counter()
        trainable = schedule.trainable_at(epoch)
        apply_trainable(model, groups, trainable)
        set_epoch(data, epoch)
        lrs_at_start = group_lrs(optimizer)
        set_train_mode(model, groups, trainable, batchnorm=config.batchnorm, dropout=config.dropout)

        losses = _Losses(epoch, world)
        batches = len(data.train)
        cached = cache is not None and epoch in cache.epochs and cache.fill(device, amp)
        forward = cache.head if cached and cache is not None else compiled
        # a last partial batch runs uncompiled: one compile per phase, for one static batch shape
        partial = cache.head if cached and cache is not None else model
        aux_weight = config.aux_loss_weight if aux_trains(model) else 0.0
        optimizer.zero_grad(set_to_none=True)
        stepping = 0  # examples in the optimizer step being accumulated
        for i, (x, y) in enumerate(cache.batches() if cached and cache is not None else data.train):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            if training.mix is not None:
                x, y = training.mix(x, y)  # draws from the global RNG, which the training state saves
            with autocast_for(device, amp):
                loss = training_loss((forward if len(x) == full else partial)(x), y, aux_weight, criterion)
            losses.add(loss, len(y))  # on the device: no host sync per batch
            # each batch weighs by its examples; a short last step is scaled up to the mean over its own
            # examples before clipping (_optimizer_step), so it is the short last batch of the big-batch run
            scaled = loss * (len(y) / per_step)
            stepping += len(y)
            (scaler.scale(scaled) if scaler else scaled).backward()
            if (i + 1) % config.accumulate == 0 or i + 1 == batches:
                average_gradients(model, world)
                optimizer_step(model, optimizer, scaler, config.grad_clip, per_step / stepping)
                stepping = 0
                training.scheduler.step()
                if ema is not None:
                    ema.step(model)
                optimizer.zero_grad(set_to_none=True)
            if on_batch is not None:
                on_batch(i, batches, loss.detach())

        total_loss, seen = losses.total()  # raises on a NaN/inf loss, before any checkpoint
        broadcast_buffers(model, world)  # every rank validates and saves the same model
        # val_loss, val_acc and what else the task measures (with ema, each again as _ema)
        validation = ({"val_loss": None, "val_acc": None} if data.val is None
                      else training.task.validate(model, ema, data, device, amp))
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            **validation,
            "lr": lrs_at_start,
            "trainable_groups": list(trainable),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "feature_cache": cached,
            **({"compiles": compiles_so_far() - compiles} if compiling else {}),
            **({"feature_cache_refused": cache.refused} if cache is not None and cache.refused else {}),
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(metrics)
        stop = False
        if config.early_stopping is not None:
            best, stale = _update_early_stopping(best, stale, metrics, config.early_stopping)
            stop = stale >= config.early_stopping.patience
            metrics["early_stopped"] = stop
        if on_epoch_end is not None:
            on_epoch_end(metrics)
        if stop:
            break
    return history


@overload
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none",
             classes: None = None) -> tuple[float, float]: ...
@overload
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none", *,
             classes: Sequence[str]) -> tuple[float, float, dict[str, float | None]]: ...
@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none",
             classes: Sequence[str] | None = None) -> Any:
    """Mean cross-entropy and accuracy over ``loader``, in eval mode; with ``classes`` (label i is
    ``classes[i]``) also each class's accuracy on its examples (None for a class without any)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    hits = torch.zeros(len(classes or ()), dtype=torch.long)  # per class: right, and seen
    counts = torch.zeros(len(classes or ()), dtype=torch.long)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast_for(device, amp):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        right = logits.argmax(1) == y
        correct += right.sum().item()
        seen += len(y)
        if classes is not None:
            counts += torch.bincount(y.cpu(), minlength=len(classes))[:len(classes)]
            hits += torch.bincount(y[right].cpu(), minlength=len(classes))[:len(classes)]
    if classes is None:
        return total_loss / max(seen, 1), correct / max(seen, 1)
    per_class = {name: (hits[c].item() / counts[c].item() if counts[c] else None) for c, name in enumerate(classes)}
    return total_loss / max(seen, 1), correct / max(seen, 1), per_class


class _Losses:
    """One epoch's training losses, kept on the device and read once at its end: no host sync per batch.

    The epoch's ``train_loss`` is summed on the host in batch order from the same float32 values
    ``loss.item()`` gave, so it is the number a per-batch loop reports. One process alone also
    checks every 1024 batches, so a NaN run stops early (under several processes a rank may not
    stop alone: the others would wait for its gradients).
    """

    _CHECK_EVERY = 1024

    def __init__(self, epoch: int, world: World) -> None:
        self.epoch, self.world = epoch, world
        self.pending: list[torch.Tensor] = []  # 0-d losses, detached
        self.chunks: list[torch.Tensor] = []  # (up to _CHECK_EVERY,) float32 each
        self.sizes: list[int] = []

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.pending.append(loss.detach())
        self.sizes.append(n)
        if len(self.pending) == self._CHECK_EVERY:
            self.chunks.append(torch.stack([t.float() for t in self.pending]))
            self.pending = []
            if not self.world.distributed and not bool(torch.isfinite(self.chunks[-1]).all()):
                self._raise(self._values())

    def total(self) -> tuple[float, int]:
        """(sum of the losses weighted by batch size over every rank, examples seen over every rank).

        Raises:
            RunError: a loss was NaN or infinite, naming the epoch and the first such batch.
        """
        values = self._values()
        total = 0.0
        for value, n in zip(values, self.sizes):
            total += value * n
        total, seen = all_sum([total, sum(self.sizes)], self.world)
        if not math.isfinite(total):
            self._raise(values, total / max(seen, 1))
        return total, int(seen)

    def _values(self) -> list[float]:
        if self.pending:
            self.chunks.append(torch.stack([t.float() for t in self.pending]))
            self.pending = []
        return torch.cat(self.chunks).tolist() if self.chunks else []

    def _raise(self, values: list[float], mean: float | None = None) -> None:
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        where = f"batch {bad}" if bad is not None else "another process"
        value = values[bad] if bad is not None else mean
        raise RunError(f"epoch {self.epoch}, {where}: the loss is {value}; lower optimizer.lr, "
                       "set train.grad_clip, or check the data")


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler an ``amp`` run needs on ``device``: fp16 on CUDA only (bf16 and CPU fp16 need none)."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None


def training_loss(output: Any, y: torch.Tensor, aux_weight: float, criterion: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``criterion`` of the logits; with auxiliary outputs (googlenet's and inception_v3's named
    tuples in training mode: main logits first), plus ``aux_weight`` x that of each of them."""
    if isinstance(output, torch.Tensor):
        return criterion(output, y)
    main, *aux = output
    loss = criterion(main, y)
    for logits in aux:
        if logits is not None and aux_weight:
            loss = loss + aux_weight * criterion(logits, y)
    return loss


def aux_trains(model: nn.Module) -> bool:
    # auxiliary classifiers count only while they train: a frozen one (e.g. fresh, in a frozen
    # group) would push the trainable body with gradients through its random weights
    aux = [p for module in aux_classifiers(model).values() for p in module.parameters()]
    return bool(aux) and all(p.requires_grad for p in aux)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, grad_clip: float | None,
                   rescale: float = 1.0) -> None:
    """One optimizer step on the accumulated gradients: unscaled (fp16), times ``rescale`` (a short step's, so that
    it is the mean over its own examples), clipped to ``grad_clip`` (global norm), then stepped."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if rescale != 1.0:
        for grad in [p.grad for p in params if p.grad is not None]:
            grad.mul_(rescale)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
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
    sign = -1.0 if "loss" in rule.metric else 1.0  # a loss goes down; accuracy, mAP and F1 go up
    if best is None or sign * (value - best) > rule.min_delta:
        return value, 0
    return best, stale + 1

