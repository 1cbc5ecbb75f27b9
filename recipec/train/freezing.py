"""Which layer groups train at each epoch, and what BatchNorm (and the rest) of frozen groups does.

A schedule is compiled once, before training, into a table ``table[epoch][group]`` so the
plan can show it. The fit loop then calls, at the start of each epoch::

    apply_trainable(model, groups, schedule.trainable_at(epoch))
    set_train_mode(model, groups, schedule.trainable_at(epoch), batchnorm=batchnorm, dropout=dropout)

and calls :func:`set_train_mode` again wherever it would call ``model.train()`` (e.g. after
validation), because ``model.train()`` puts every BatchNorm back into training mode.

Freezing never touches the optimizer: every group is in it from the start, and a frozen
parameter has ``requires_grad=False`` and ``grad=None``, which AdamW, Adam and SGD skip
(no update, no weight decay, state kept).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from recipec.errors import GroupError, Problem
from recipec.model.groups import LayerGroup, param_to_group
from recipec.train.modes import frozen_modules

__all__ = ["FreezeSchedule", "adapter_parameters", "apply_trainable", "batchnorm_modes", "compile_schedule",
           "fixed_parameters", "keep_fixed", "mark_adapters", "set_train_mode"]

_NO_UNFREEZE: Mapping[int, Sequence[str]] = MappingProxyType({})
_FIXED = "_recipec_fixed"  # attribute of a parameter the architecture keeps frozen (see keep_fixed)
_ADAPTER = "_recipec_adapter"  # an adapter's parameter: trains at every epoch, whatever its group does
_ADAPTED = "_recipec_adapted"  # the base weight of an adapted module: never trains (see mark_adapters)


@dataclass(frozen=True)
class FreezeSchedule:
    """Trainable groups per epoch.

    Attributes:
        groups: group names, earliest first (the head last).
        epochs: number of epochs.
        table: ``table[epoch][i]`` is True when ``groups[i]`` trains during ``epoch``.
    """

    groups: tuple[str, ...]
    epochs: int
    table: tuple[tuple[bool, ...], ...]

    def trainable_at(self, epoch: int) -> tuple[str, ...]:
        """Groups that train during ``epoch`` (earliest first)."""
        return tuple(g for g, on in zip(self.groups, self.table[epoch]) if on)

    def unfrozen_at(self, epoch: int) -> tuple[str, ...]:
        """Groups frozen during ``epoch - 1`` that train from ``epoch`` on; none at epoch 0."""
        if epoch == 0:
            return ()
        before = self.table[epoch - 1]
        return tuple(g for g, was, now in zip(self.groups, before, self.table[epoch]) if now and not was)

    def to_dict(self) -> dict[str, Any]:
        """``{"epochs": n, "groups": [{"name": ..., "trainable": [per epoch]}]}``, for the plan."""
        return {"epochs": self.epochs,
                "groups": [{"name": g, "trainable": [row[i] for row in self.table]} for i, g in enumerate(self.groups)]}


def compile_schedule(
    groups: Sequence[str],
    *,
    epochs: int,
    trainable: Sequence[str] | None,
    unfreeze: Mapping[int, Sequence[str]] = _NO_UNFREEZE,
    gradual_every: int | None = None,
    gradual_start: int = 1,
) -> FreezeSchedule:
    """Compile the recipe's ``freeze`` section into a per-epoch table.

    At the start of each epoch, the groups listed in ``unfreeze`` for that epoch are unfrozen
    first; then, on a gradual epoch (``gradual_start``, then every ``gradual_every`` epochs),
    the frozen group closest to the head is unfrozen (ULMFiT). A group never freezes again.
    ``trainable=[head]`` with ``unfreeze={5: [layer4], 10: [layer3]}`` is the same schedule as
    ``gradual_every=5, gradual_start=5`` on a resnet's groups.

    Args:
        groups: group names, earliest first.
        epochs: number of epochs.
        trainable: groups that train from epoch 0; None: every group.
        unfreeze: epoch -> groups unfrozen at the start of that epoch.
        gradual_every: epochs between two gradual unfreezings; None: no gradual unfreezing.
        gradual_start: first epoch of gradual unfreezing.

    Returns:
        The schedule.

    Raises:
        GroupError: an unknown group, an epoch that never starts, or unfreezing with
            ``trainable=None`` (nothing would be frozen). Problems carry the argument's name
            (``("unfreeze", 3, 1)``), which the compiler turns into the recipe's ``freeze.*`` paths.

    Example:
        >>> compile_schedule(["body", "head"], epochs=3, trainable=["head"], unfreeze={2: ["body"]}).table
        ((False, True), (False, True), (True, True))
    """
    if epochs < 1:
        raise GroupError(f"a schedule needs at least one epoch, got epochs={epochs}")
    known = f"(groups are {', '.join(groups)})"
    never = f"(train.epochs is {epochs}; epochs count from 0)"
    problems: list[Problem] = []
    for i, name in enumerate(trainable or []):
        if name not in groups:
            problems.append((("trainable", i), f"unknown group {name!r} {known}"))
    for epoch, names in unfreeze.items():
        if not 0 <= epoch < epochs:
            problems.append((("unfreeze", epoch), f"epoch {epoch} never starts {never}"))
        for i, name in enumerate(names):
            if name not in groups:
                problems.append((("unfreeze", epoch, i), f"unknown group {name!r} {known}"))
    if gradual_every is not None:
        if gradual_every < 1:
            problems.append((("gradual_every",), f"must be at least 1, got {gradual_every}"))
        if not 0 <= gradual_start < epochs:
            problems.append((("gradual_start",), f"epoch {gradual_start} never starts {never}"))
    if trainable is None and (unfreeze or gradual_every is not None):
        problems.append((("trainable",), ("is null, so every group trains from epoch 0 and nothing is left to "
                                                   "unfreeze; list the groups that train first, e.g. trainable: [head]")))
    if problems:
        raise GroupError(problems)

    on = set(groups if trainable is None else trainable)
    table: list[tuple[bool, ...]] = []
    for epoch in range(epochs):
        on.update(unfreeze.get(epoch, ()))
        if gradual_every is not None and epoch >= gradual_start and (epoch - gradual_start) % gradual_every == 0:
            top_frozen = next((g for g in reversed(groups) if g not in on), None)
            if top_frozen is not None:
                on.add(top_frozen)
        table.append(tuple(g in on for g in groups))
    return FreezeSchedule(tuple(groups), epochs, tuple(table))


def apply_trainable(model: nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str]) -> None:
    """Set ``requires_grad`` of every parameter from its group; frozen parameters lose their grad.

    Setting ``grad`` to None (not zero) matters: AdamW applies weight decay to a parameter whose
    grad is a zero tensor, but skips one whose grad is None. A parameter :func:`keep_fixed`
    marked (frozen by the architecture itself) never trains.

    Raises:
        GroupError: ``trainable`` names an unknown group, or a parameter is in no group.
    """
    on = _check_names(groups, trainable)
    owner = param_to_group(groups)
    for name, param in model.named_parameters():
        if name not in owner:
            raise GroupError(f"parameter {name!r} is in no layer group; the groups were assigned to another model")
        train = ((owner[name] in on or getattr(param, _ADAPTER, False))
                 and not getattr(param, _FIXED, False) and not getattr(param, _ADAPTED, False))
        param.requires_grad_(train)
        if not train:
            param.grad = None


def keep_fixed(model: nn.Module, names: Collection[str] | None = None) -> list[str]:
    """Mark the parameters the architecture itself keeps frozen (``requires_grad=False``); return their names.

    Call it on the freshly built architecture: :func:`apply_trainable` never makes a marked
    parameter trainable, whatever its group does (a factory's fixed filters or embeddings
    stay as the architecture defines them). ``names``: mark these instead (again, after a
    module was rebuilt, e.g. the first convolution for ``in_channels``).
    """
    fixed = []
    for name, param in model.named_parameters():
        if (not param.requires_grad) if names is None else name in names:
            setattr(param, _FIXED, True)
            fixed.append(name)
    return fixed


def mark_adapters(model: nn.Module, adapters: Collection[str], bases: Collection[str],
                  modules: Collection[str] = ()) -> None:
    """Mark adapter parameters (``adapters``: trainable at every epoch, like a new head) and the base
    weights of the modules they adapt (``bases``: never trainable, whatever their group does); for
    :func:`apply_trainable`. ``modules``: the adapters' own modules (their dropout), which
    :func:`set_train_mode` leaves in training mode inside frozen groups."""
    for name in modules:
        setattr(model.get_submodule(name), _ADAPTER, True)
    for name, param in model.named_parameters():
        if name in adapters:
            setattr(param, _ADAPTER, True)
        if name in bases:
            setattr(param, _ADAPTED, True)


def adapter_parameters(model: nn.Module) -> tuple[list[str], list[str]]:
    """The names :func:`mark_adapters` marked: (adapter parameters, adapted base weights)."""
    named = list(model.named_parameters())
    return ([name for name, p in named if getattr(p, _ADAPTER, False)],
            [name for name, p in named if getattr(p, _ADAPTED, False)])


def fixed_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters :func:`keep_fixed` marked."""
    return [name for name, param in model.named_parameters() if getattr(param, _FIXED, False)]


def set_train_mode(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    trainable: Iterable[str],
    *,
    batchnorm: str = "frozen",
    dropout: str = "frozen",
) -> None:
    """``model.train()``, then the frozen groups back to eval mode as ``batchnorm`` and ``dropout`` say.

    Call it wherever the loop would call ``model.train()``. An eval-mode BatchNorm normalises
    with its running statistics and does not update them, so a frozen group computes exactly
    what it computed before fine-tuning. With ``batchnorm="train"`` every BatchNorm stays in
    training mode (running statistics adapt to the new data; weights stay frozen).

    With ``dropout="frozen"`` every other module of the frozen groups is in eval mode too:
    dropout, stochastic depth and any other train-mode randomness stop there, so the frozen
    part is a fixed function (:mod:`recipec.train.modes` says which modules belong to which
    groups). With ``dropout="train"`` they stay in training mode, as ``model.train()`` leaves them.

    A BatchNorm module is frozen when all its parameters belong to frozen groups; one without
    parameters (``affine=False``) follows the groups of its nearest ancestor that has some.

    Raises:
        GroupError: unknown group name, ``batchnorm`` or ``dropout`` value.
    """
    modes = _batchnorm_modes(model, groups, trainable, batchnorm)
    if dropout not in ("frozen", "train"):
        raise GroupError((("dropout",), f"must be frozen or train, got {dropout!r}"))
    quiet = frozen_modules(model, groups, trainable) if dropout == "frozen" else []
    model.train()
    for module in quiet:
        if not getattr(module, _ADAPTER, False):  # an adapter's dropout trains with the adapter
            module.training = False  # this module only: its children have their own groups
    for module, (_, mode) in modes.items():
        if mode == "eval":
            module.eval()


def batchnorm_modes(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    trainable: Iterable[str],
    batchnorm: str,
) -> dict[str, str]:
    """The mode :func:`set_train_mode` gives the BatchNorm layers of each group, for the plan.

    Returns:
        group name -> ``"eval"``, ``"train"``, ``"-"`` (no BatchNorm in the group) or ``"mixed"``
        (a BatchNorm shared with another group whose state differs).
    """
    seen: dict[str, set[str]] = {group.name: set() for group in groups}
    for owners, mode in _batchnorm_modes(model, groups, trainable, batchnorm).values():
        for group in owners:
            seen[group].add(mode)
    return {name: "-" if not modes else modes.pop() if len(modes) == 1 else "mixed" for name, modes in seen.items()}


def _batchnorm_modes(
    model: nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str], batchnorm: str,
) -> dict[nn.Module, tuple[set[str], str]]:
    """Every BatchNorm module -> (the groups of its parameters, "eval" | "train")."""
    if batchnorm not in ("frozen", "train"):
        raise GroupError((("batchnorm",), f"must be frozen or train, got {batchnorm!r}"))
    on = _check_names(groups, trainable)
    owner = param_to_group(groups)
    names = list(owner)
    modes: dict[nn.Module, tuple[set[str], str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        owners = {owner[f"{name}.{p}"] for p, _ in module.named_parameters(recurse=False)}
        scope = name
        while not owners and scope:  # affine=False: take the groups of the nearest ancestor with parameters
            scope = scope.rpartition(".")[0]
            owners = {owner[n] for n in names if not scope or n.startswith(scope + ".")}
        frozen = batchnorm == "frozen" and bool(owners) and not owners & on
        modes[module] = (owners, "eval" if frozen else "train")
    return modes


def _check_names(groups: Sequence[LayerGroup], trainable: Iterable[str]) -> set[str]:
    on = set(trainable)
    unknown = sorted(on - {group.name for group in groups})
    if unknown:
        raise GroupError(f"unknown group(s) {', '.join(map(repr, unknown))} "
                         f"(groups are {', '.join(group.name for group in groups)})")
    return on
