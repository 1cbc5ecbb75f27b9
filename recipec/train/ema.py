"""Exponential moving average of the weights (``train.ema``), as a plain state dict of tensors.

After every ``every`` optimizer steps, each floating parameter that trains is pulled
towards the model's: ``ema = decay_t * ema + (1 - decay_t) * weight`` (``Tensor.lerp_``;
``torch.optim.swa_utils.get_ema_multi_avg_fn(decay)`` computes the same). Everything else
is copied, so it is exact: a frozen parameter (``requires_grad`` False at that step) stays
bit-for-bit the model's, and buffers (BatchNorm statistics, counters) are the model's, as
timm's ``ModelEmaV3`` copies them. ``decay_t`` is ``decay``, or with ``warmup``
``min(decay, (1 + t) / (10 + t))`` for the t-th update counted from 0 (TensorFlow's
``ExponentialMovingAverage(num_updates=t)``), so early EMAs are not dominated by the
pretrained starting point.

The EMA lives on the model's device, in the model's dtypes, and starts as a copy of the
model when training starts. Its tensors and two counters go into the training state, so a
resumed run continues the same average bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["Ema"]


class Ema:
    """An EMA of ``model``'s state dict.

    Args:
        model: the model whose weights are averaged (its current state is the starting point).
        decay: the decay, in (0, 1).
        warmup: use ``min(decay, (1 + t) / (10 + t))`` for the t-th update.
        every: optimizer steps between updates.

    Example:
        >>> ema = Ema(model, decay=0.999)
        >>> optimizer.step(); ema.step(model)
        >>> val = evaluate(ema.module(model), loader, device)
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = False, every: int = 1) -> None:
        self.decay, self.warmup, self.every = float(decay), bool(warmup), int(every)
        self.state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.steps = 0  # optimizer steps seen
        self.updates = 0  # averages taken

    def decay_at(self, t: int) -> float:
        """The decay of the ``t``-th update (from 0)."""
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Count one optimizer step; every ``every`` steps, average ``model`` in."""
        self.steps += 1
        if self.steps % self.every:
            return
        weight = 1.0 - self.decay_at(self.updates)
        trains = {name for name, p in model.named_parameters() if p.requires_grad}
        averaged: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for name, value in model.state_dict().items():
            ema = self.state[name]
            if name in trains and value.is_floating_point():
                averaged.append(ema)
                weights.append(value.detach())
            else:
                ema.copy_(value)
        if averaged:  # one fused kernel per device and dtype on CUDA (timm's ModelEmaV3 does the same)
            torch._foreach_lerp_(averaged, weights, weight)
        self.updates += 1

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Take ``model``'s buffers (after they are broadcast from rank 0, all ranks hold the same)."""
        for name, value in model.named_buffers():
            if name in self.state:
                self.state[name].copy_(value)

    def module(self, model: nn.Module) -> nn.Module:
        """``model`` computing with the EMA weights (``torch.func.functional_call``); ``model`` is untouched."""
        return _WithState(model, self.state)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the training state (``save_state(extra={"ema": ...})``)."""
        return {"state": self.state, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Put a saved EMA back (onto the model's device and dtypes).

        Raises:
            ValueError: the saved EMA holds other tensors than the model.
        """
        tensors = saved["state"]
        if set(tensors) != set(self.state):
            raise ValueError(f"the saved EMA holds {len(tensors)} tensors, the model {len(self.state)}")
        for name, value in tensors.items():
            if value.shape != self.state[name].shape:
                raise ValueError(f"the saved EMA's {name} has shape {list(value.shape)}, the model's "
                                 f"{list(self.state[name].shape)}")
            self.state[name].copy_(value)
        self.steps, self.updates = int(saved["steps"]), int(saved["updates"])


class _WithState(nn.Module):
    """Runs ``model`` with another state dict (parameters and buffers), leaving the model's own untouched."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._state = state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.model, self._state, args, kwargs)
