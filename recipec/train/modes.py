"""Which modules behave differently in training mode, and which layer groups they belong to.

``freeze.dropout: frozen`` puts every module of a frozen group in eval mode (BatchNorm follows
``freeze.batchnorm``), so a frozen part of the network is a fixed function: dropout of every
kind, stochastic depth (``torchvision.ops.StochasticDepth``), attention dropout and any other
``self.training`` branch stop drawing random numbers there. The feature cache relies on it.

A module with parameters belongs to the groups of all the parameters under it. One without
(dropout, stochastic depth, activations) belongs to the group of its nearest ancestor with
parameters when they are all in one group (a head's own dropout is the head's); otherwise to
the groups of the closest module before it, in registration order, that holds parameters
itself: in a ``Sequential`` that is the layer that produced its input (vgg's ``classifier.5``
dropout belongs to ``classifier.3``, not to the head ``classifier.6``). A module is frozen
when all its groups are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import StochasticDepth

from recipec.model.groups import LayerGroup, param_to_group

__all__ = ["depends_on_training", "differs_in_training", "frozen_modules", "module_owners", "random_layer_modes"]

# Source text that makes a module's forward differ between train and eval mode, or random in
# both: the `training` flag, random tensors, functional dropout (training=True by default) and
# torchvision's functional stochastic depth (a call of a module attribute is that module's business).
_TRAINING = re.compile(r"\btraining\b|\brand(n|int|perm)?(_like)?\(|\bbernoulli|\bF\.\w*dropout\w*\("
                       r"|\bfunctional\.\w*dropout\w*\(|(?<![.\w])stochastic_depth\(|(?<![.\w])drop_path\(")
_NOT_FORWARD = frozenset({"__init__", "__setstate__", "extra_repr", "reset_parameters", "_reset_parameters",
                          "_load_from_state_dict", "_init_weights", "_initialize_weights"})


def depends_on_training(module: nn.Module) -> bool:
    """True unless the module's own code provably computes the same in train and eval mode.

    Reads the source of every method its class (and its bases below ``nn.Module``) defines,
    ``__init__`` and weight initialisation aside; a class whose source cannot be read counts as
    dependent. Children are not looked into: each module answers for its own code.
    """
    cls = type(module)
    if cls not in _DEPENDS:
        _DEPENDS[cls] = _class_depends(cls)
    return _DEPENDS[cls]


_DEPENDS: dict[type, bool] = {}


def _class_depends(cls: type) -> bool:
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for name, attr in vars(klass).items():
            function = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if name in _NOT_FORWARD or not inspect.isfunction(function):
                continue
            try:
                source = inspect.getsource(function)
            except (OSError, TypeError):
                return True
            if _TRAINING.search(source):
                return True
    return False


def module_owners(model: nn.Module, groups: Sequence[LayerGroup]) -> dict[str, tuple[nn.Module, frozenset[str]]]:
    """Every submodule (the model itself aside) by name -> (module, the groups it belongs to)."""
    owner = param_to_group(groups)
    below: dict[str, set[str]] = {}
    for pname in owner:
        parts = pname.split(".")
        for i in range(1, len(parts)):
            below.setdefault(".".join(parts[:i]), set()).add(owner[pname])
    owners: dict[str, tuple[nn.Module, frozenset[str]]] = {}
    last: frozenset[str] = frozenset()
    waiting: list[tuple[str, nn.Module]] = []  # parameterless modules before the first parameter
    for name, module in model.named_modules():
        # a parameter shared with an earlier module is named (and grouped) after that one only
        own = frozenset(g for p, _ in module.named_parameters(recurse=False)
                        if (g := owner.get(f"{name}.{p}" if name else p)) is not None)
        if own:
            last = own
            for early, m in waiting:
                owners[early] = (m, own)
            waiting.clear()
        if not name:
            continue
        scope = name.rpartition(".")[0]
        while scope and scope not in below:
            scope = scope.rpartition(".")[0]
        if name in below:
            owners[name] = (module, frozenset(below[name]))
        elif scope and len(below[scope]) == 1:  # inside a module of one group (a head's own dropout)
            owners[name] = (module, frozenset(below[scope]))
        elif last:
            owners[name] = (module, last)
        else:
            waiting.append((name, module))
    return owners


def frozen_modules(model: nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str]) -> list[nn.Module]:
    """The modules, BatchNorm aside, whose groups are all frozen (see the module docstring)."""
    on = set(trainable)
    return [module for module, owned in module_owners(model, groups).values()
            if owned and not owned & on and not isinstance(module, _BatchNorm)]


def random_layer_modes(model: nn.Module, groups: Sequence[LayerGroup], trainable: Iterable[str],
                       dropout: str) -> dict[str, str]:
    """group -> the mode of its train-mode-dependent modules (BatchNorm aside), for the plan.

    ``"eval"``, ``"train"``, ``"-"`` (none in the group) or ``"mixed"``.
    """
    on = set(trainable)
    seen: dict[str, set[str]] = {group.name: set() for group in groups}
    for module, owned in module_owners(model, groups).values():
        if isinstance(module, _BatchNorm) or not owned or not differs_in_training(module):
            continue
        mode = "eval" if dropout == "frozen" and not owned & on else "train"
        for group in owned:
            seen[group].add(mode)
    return {name: "-" if not modes else modes.pop() if len(modes) == 1 else "mixed" for name, modes in seen.items()}


def differs_in_training(module: nn.Module) -> bool:
    """:func:`depends_on_training`, except dropout, stochastic depth and attention that drop nothing (``p == 0``)."""
    if isinstance(module, (nn.modules.dropout._DropoutNd, StochasticDepth)) and module.p == 0:
        return False
    if type(module) is nn.MultiheadAttention and module.dropout == 0:  # `training` only gates its dropout
        return False
    return depends_on_training(module)
