"""Parameter groups (discriminative learning rates, no weight decay), optimizer, scheduler.

Every layer group is in the optimizer from the start, frozen or not, so unfreezing never
changes the optimizer's structure and the scheduler sees every group (Lightning adds groups
at unfreeze time, which its schedulers then miss). Each layer group becomes up to two torch
param groups: parameters with weight decay and parameters without.

The learning-rate schedule (``lr_factor``, ``build_scheduler``, ``lr_table``) is :mod:`recipec.train.schedule`:
it scales every param group from its own initial lr, so the ratios between layer groups hold at every step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from recipec.errors import GroupError, RecipeError
from recipec.model.groups import LayerGroup

__all__ = ["build_optimizer", "build_param_groups", "group_learning_rates", "tiny_learning_rates"]

_NO_OVERRIDES: Mapping[str, float] = MappingProxyType({})
# a group whose lr is below optimizer.lr times this moves so little it is frozen in all but name (the plan notes it)
TINY_LR_RATIO = 1e-6
_NORMS = (_BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


def group_learning_rates(
    groups: Sequence[str],
    *,
    lr: float,
    lr_decay: float = 1.0,
    group_lr: Mapping[str, float] = _NO_OVERRIDES,
) -> dict[str, float]:
    """Learning rate of each group: group i of n gets ``lr / lr_decay ** (n - 1 - i)`` (ULMFiT).

    The last group (the head) gets ``lr``; ``group_lr`` overrides groups by name.

    Args:
        groups: group names, earliest first.
        lr: learning rate of the last group.
        lr_decay: ratio between the learning rates of neighbouring groups (2.6 in ULMFiT).
        group_lr: explicit learning rates by group name.

    Returns:
        group name -> learning rate, in group order.

    Raises:
        GroupError: ``group_lr`` names an unknown group (at the field ``("group_lr", name)``).

    Example:
        >>> group_learning_rates(["body", "head"], lr=1e-3, lr_decay=10)
        {'body': 0.0001, 'head': 0.001}
    """
    unknown = [name for name in group_lr if name not in groups]
    if unknown:
        raise GroupError([(("group_lr", name), f"unknown group {name!r} (groups are {', '.join(groups)})")
                          for name in unknown])
    n = len(groups)
    return {name: group_lr[name] if name in group_lr else _decayed(lr, lr_decay, n - 1 - i)
            for i, name in enumerate(groups)}


def _decayed(lr: float, lr_decay: float, k: int) -> float:
    """``lr / lr_decay ** k``, or its limit 0.0 where ``lr_decay ** k`` overflows a float (100 ** 155)."""
    try:
        return lr / lr_decay ** k
    except OverflowError:  # far below any float32 step anyway: exp underflows to 0.0, never raises
        return lr * math.exp(-k * math.log(lr_decay))


def tiny_learning_rates(rates: Mapping[str, float], *, lr: float, trainable: Sequence[str],
                        ratio: float = TINY_LR_RATIO) -> dict[str, float]:
    """The groups in ``trainable`` whose learning rate is below ``lr * ratio``: trained in name only.

    Example:
        >>> tiny_learning_rates({"stem": 1e-12, "head": 1e-3}, lr=1e-3, trainable=["stem", "head"])
        {'stem': 1e-12}
    """
    return {name: rate for name, rate in rates.items() if name in trainable and rate < lr * ratio}


def build_param_groups(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    *,
    lr: float,
    lr_decay: float = 1.0,
    group_lr: Mapping[str, float] = _NO_OVERRIDES,
    weight_decay: float = 0.0,
    no_weight_decay: Sequence[str] = ("bias", "norm"),
) -> list[dict[str, Any]]:
    """Torch param groups for every layer group, frozen ones included.

    Args:
        model: the model the groups were assigned on.
        groups: layer groups, earliest first.
        lr, lr_decay, group_lr: as in :func:`group_learning_rates`.
        weight_decay: weight decay of the parameters that have any.
        no_weight_decay: parameters without weight decay: ``"bias"`` (names ending in bias),
            ``"norm"`` (parameters of normalisation layers, and 1-d parameters of any module whose
            class name contains ``Norm``), or a regex searched in the parameter name.

    Returns:
        Per layer group, a decay and a no-decay param group (empty ones left out), each a dict
        with ``name`` (the layer group), ``params``, ``lr``, ``initial_lr``, ``weight_decay`` and
        ``no_decay``. Extra keys travel through torch optimizers and their state dicts.

    Raises:
        GroupError: unknown group in ``group_lr``, or an invalid regex in ``no_weight_decay``.
    """
    rates = group_learning_rates([g.name for g in groups], lr=lr, lr_decay=lr_decay, group_lr=group_lr)
    exempt = _no_decay_names(model, no_weight_decay)
    params = dict(model.named_parameters())
    result: list[dict[str, Any]] = []
    for group in groups:
        for no_decay in (False, True):
            members = [params[name] for name in group.params if (name in exempt) == no_decay]
            if members:
                result.append({"name": group.name, "params": members, "lr": rates[group.name],
                               "initial_lr": rates[group.name], "weight_decay": 0.0 if no_decay else weight_decay,
                               "no_decay": no_decay})
    return result


def _no_decay_names(model: nn.Module, rules: Sequence[str]) -> set[str]:
    problems = []
    regexes = []
    for i, rule in enumerate(rules):
        if rule not in ("bias", "norm"):
            try:
                regexes.append(re.compile(rule))
            except re.error as exc:
                problems.append((("no_weight_decay", i), f"{rule!r} is not a valid regular expression: {exc}"))
    if problems:
        raise GroupError(problems)
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORMS)
        for short, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{short}" if module_name else short
            if (("bias" in rules and name.endswith("bias"))
                    or ("norm" in rules and (is_norm or (param.ndim == 1 and "Norm" in type(module).__name__)))
                    or any(regex.search(name) for regex in regexes)):
                exempt.add(name)
    return exempt


def build_optimizer(
    param_groups: list[dict[str, Any]],
    *,
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The optimizer over ``param_groups``; each group brings its own lr and weight decay.

    ``adamw`` decouples weight decay from the gradient; ``adam`` and ``sgd`` add it to the
    gradient (L2). Parameters whose grad is None (frozen ones) are skipped by all three.

    Args:
        param_groups: from :func:`build_param_groups`.
        name: ``adamw``, ``adam`` or ``sgd``.
        lr: default lr (every group from :func:`build_param_groups` has its own).
        momentum, nesterov: sgd only.
        betas: adam and adamw only.

    Raises:
        RecipeError: unknown optimizer name, or nesterov without momentum.
    """
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=0.0)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, betas=betas, weight_decay=0.0)
    if name == "sgd":
        if nesterov and momentum <= 0:
            raise RecipeError((("nesterov",), "needs momentum > 0; set optimizer.momentum, e.g. 0.9"))
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0)
    raise RecipeError((("name",), f"unknown optimizer {name!r}; use adamw, adam or sgd"))
