"""Classifier heads, whatever the family: find a module by dotted path, build a new head, put it in place.

Which module is a family's classifier, and how a family replaces it, is the family's own fact
(:mod:`recipec.model.families`); what is here works on any ``nn.Module``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, TypedDict, TypeVar

import torch
from torch import nn

from recipec.errors import ModelError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = [
    "DropoutConv2d",
    "DropoutLinear",
    "FactoryKwargs",
    "HeadInfo",
    "aux_classifiers",
    "build_head",
    "describe_module",
    "get_module",
    "in_features_of",
    "last_linear_path",
    "placement",
    "renamed_legacy_heads",
    "replace_module",
    "resolve_path",
    "set_module",
]

_AT = ("model", "head", "at")
T = TypeVar("T")
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_MAX_HEAD_WEIGHTS = 2**31  # 8 GiB of float32; 1,000,000 classes on 2048 features (resnet50) fit, just
_AUX_HEADS = ("aux1", "aux2", "AuxLogits")


class FactoryKwargs(TypedDict, total=False):
    """Where new parameters are created, as torch's modules take it (``nn.Linear(..., **factory_kwargs)``)."""

    device: torch.device | str | None
    dtype: torch.dtype | None


@dataclass(frozen=True)
class HeadInfo:
    """What :func:`replace_head` did.

    Attributes:
        path: dotted path of the replaced module (``fc``, ``classifier.6``).
        in_features: features the head receives.
        old: short description of the module replaced, e.g. ``Linear(512 -> 1000)``.
        new: short description of the new head.
        param_prefix: state-dict prefix of the new head's tensors (``fc.``).
        num_params: parameters of the new head.
        notes: anything the caller should know, e.g. the auxiliary classifiers replaced too.
        aux_prefixes: state-dict prefixes of the replaced final layers of auxiliary classifiers.
    """

    path: str
    in_features: int
    old: str
    new: str
    param_prefix: str
    num_params: int
    notes: tuple[str, ...] = ()
    aux_prefixes: tuple[str, ...] = ()


class DropoutLinear(nn.Linear):
    """A ``Linear`` that applies dropout to its input: a linear head with dropout whose tensors keep the
    classifier's own names (``fc.weight``, ``head.fc.weight``, ``classifier.1.weight``).

    ``Sequential(Dropout, Linear)`` would name them ``fc.1.weight``, which no other library loads
    (earlier versions of recipec did so; :func:`renamed_legacy_heads` reads their files).
    """

    def __init__(self, in_features: int, out_features: int, p: float, **factory_kwargs: Unpack[FactoryKwargs]) -> None:
        super().__init__(in_features, out_features, **factory_kwargs)
        self.p = p

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(input, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


class DropoutConv2d(nn.Conv2d):
    """A 1x1 ``Conv2d`` head (squeezenet's) that applies dropout to its input, keeping the classifier's key names."""

    def __init__(self, in_channels: int, out_channels: int, p: float, **factory_kwargs: Unpack[FactoryKwargs]) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, **factory_kwargs)
        self.p = p

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(input, self.p, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def renamed_legacy_heads(state: Mapping[str, T], model: nn.Module) -> dict[str, T]:
    """``state`` with the tensors of a linear head with dropout as earlier versions wrote them (``fc.1.weight``, a
    ``Sequential(Dropout, Linear)``) under the names ``model`` gives them now (``fc.weight``).

    Only for the model's :class:`DropoutLinear` / :class:`DropoutConv2d` heads, and only when ``state``
    lacks the new name: every other key, and every other file, is returned as it is.
    """
    moves = {}
    for name, module in model.named_modules():
        if isinstance(module, (DropoutLinear, DropoutConv2d)):
            prefix = f"{name}." if name else ""
            if f"{prefix}weight" not in state and f"{prefix}1.weight" in state and f"{prefix}0.weight" not in state:
                moves[f"{prefix}1."] = prefix
    if not moves:
        return dict(state)
    out = {}
    for key, value in state.items():
        old = next((o for o in moves if key.startswith(o)), None)
        out[moves[old] + key[len(old):] if old is not None else key] = value
    return out


def _is_index(segment: str) -> bool:
    return segment.lstrip("-").isdigit()


def _path_error(model: nn.Module, path: str, reached: str, parent: nn.Module, at: tuple[str, ...]) -> ModelError:
    paths = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
    children = list(parent._modules)
    where = f"{reached!r} has children {', '.join(children)}" if reached else f"top-level modules are {', '.join(children)}"
    if not children:
        where = f"{reached!r} is a {type(parent).__name__} with no children"
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ModelError((at, f"{type(model).__name__} has no module {path!r} ({where}){hint}"))


def resolve_path(model: nn.Module, path: str, *, at: tuple[str, ...] = _AT) -> str:
    """Check that ``path`` names a submodule and write its indices out: ``classifier.-1`` -> ``classifier.6``.

    Args:
        model: the network.
        path: dotted path; a negative segment counts from the end of a ``Sequential`` or ``ModuleList``.
        at: recipe path the error is reported at.

    Raises:
        ModelError: no such module; the message names the nearest existing paths.
    """
    module: nn.Module = model
    parts: list[str] = []
    for segment in path.split(".") if path else [""]:
        key = segment
        if _is_index(segment) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            index = int(segment)
            if -len(module) <= index < len(module):
                key = str(index % len(module))
        child = module._modules.get(key) if key else None
        if child is None:
            raise _path_error(model, path, ".".join(parts), module, at)
        module = child
        parts.append(key)
    return ".".join(parts)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (Sequential indices included, negative ones too)."""
    return model.get_submodule(resolve_path(model, path))


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` in place of what is there."""
    parent_path, _, leaf = resolve_path(model, path).rpartition(".")
    setattr(model.get_submodule(parent_path), leaf, module)


def last_linear_path(model: nn.Module, arch: str) -> str:
    """Dotted path of the last ``nn.Linear`` in registration order: the classifier of a model whose
    family names none (a custom factory, a timm model that names none).

    Raises:
        ModelError: the model has no ``nn.Linear``.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError((("model", "head"), (
            f"{type(model).__name__} ({arch}) has no nn.Linear to replace; set model.head.at to its classifier's path")))
    return linears[-1]


def in_features_of(module: nn.Module) -> int:
    """Features entering a classifier: ``Linear.in_features``, ``Conv2d.in_channels``, or those of
    the first Linear (or Conv2d) inside a container.

    Raises:
        ModelError: nothing in ``module`` says how many features it takes.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ModelError((_AT, (
        f"cannot tell how many features {type(module).__name__} takes (no Linear or Conv2d in it); "
        "point model.head.at at the classifier layer")))


def build_head(
    in_features: int,
    *,
    num_classes: int,
    type: Literal["linear", "mlp"] = "linear",
    hidden: list[int] | None = None,
    dropout: float = 0.0,
    activation: Literal["relu", "gelu", "silu"] | None = None,
    conv: bool = False,
    **factory_kwargs: Unpack[FactoryKwargs],
) -> nn.Module:
    """A new classifier.

    linear: a ``Linear`` (a :class:`DropoutLinear` when ``dropout`` > 0, which applies dropout to
    its input), so its tensors are named like the architecture's own classifier (``fc.weight``)
    and load into the plain architecture. mlp: ``Linear -> activation -> [Dropout(p)]`` for each
    hidden size, then ``Linear`` to ``num_classes``: ``fc.0.weight``, ``fc.3.weight``, ... (with
    dropout: ``fc.0``, ``fc.3``; without: ``fc.0``, ``fc.2``), its own keys.

    Args:
        in_features: features (or channels, with ``conv``) entering the head.
        num_classes: outputs.
        type: ``linear`` or ``mlp``.
        hidden: mlp hidden sizes; default ``[512]``.
        dropout: dropout probability; no Dropout layer when 0.
        activation: mlp activation, ``relu`` (default), ``gelu`` or ``silu``.
        conv: build 1x1 ``Conv2d`` layers instead of ``Linear`` (squeezenet's classifier).
        **factory_kwargs: ``device`` and ``dtype`` of the parameters (see :func:`placement`).
    """
    def layer(n_in: int, n_out: int) -> nn.Module:
        if conv:
            return nn.Conv2d(n_in, n_out, kernel_size=1, **factory_kwargs)
        return nn.Linear(n_in, n_out, **factory_kwargs)

    # Counted before anything is allocated: num_classes x hidden sizes that no memory holds are an error, not an OOM kill.
    widths = [in_features, *((hidden if hidden is not None else [512]) if type == "mlp" else []), num_classes]
    weights = sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    if weights > _MAX_HEAD_WEIGHTS:
        raise ModelError((("model", "head"), (
            f"the head would hold {weights:,} weights ({weights * 4 / 2**30:,.1f} GiB in float32, layers "
            f"{' -> '.join(map(str, widths))}); at most {_MAX_HEAD_WEIGHTS:,}: lower num_classes or the hidden sizes")))
    if type == "linear":
        if dropout > 0:
            kind = DropoutConv2d if conv else DropoutLinear
            return kind(in_features, num_classes, dropout, **factory_kwargs)
        return layer(in_features, num_classes)
    if type != "mlp":
        raise ModelError((("model", "head", "type"), f"unknown head type {type!r}; use linear or mlp"))
    if activation is not None and activation not in _ACTIVATIONS:
        raise ModelError((("model", "head", "activation"), (
            f"unknown activation {activation!r}; use {', '.join(_ACTIVATIONS)}")))
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden if hidden is not None else [512]:
        layers += [layer(width, size), _ACTIVATIONS[activation or "relu"]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers, layer(width, num_classes))


def describe_module(module: nn.Module) -> str:
    """A short description of a head, e.g. ``Linear(512 -> 5, dropout 0.2)``."""
    dropout = f", dropout {module.p}" if isinstance(module, (DropoutLinear, DropoutConv2d)) else ""
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features} -> {module.out_features}{dropout})"
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return f"Conv2d({module.in_channels} -> {module.out_channels}, {kh}x{kw}{dropout})"
    if isinstance(module, nn.Dropout):
        return f"Dropout({module.p})"
    children = list(module.children())
    if children:
        return f"{type(module).__name__}[{', '.join(describe_module(c) for c in children)}]"
    return type(module).__name__


def placement(module: nn.Module) -> FactoryKwargs:
    """Device and dtype of the first floating-point tensor of ``module`` (None, None without one)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {"device": None, "dtype": None}


def replace_module(
    model: nn.Module,
    path: str,
    *,
    num_classes: int,
    type: Literal["linear", "mlp"] = "linear",
    hidden: list[int] | None = None,
    dropout: float = 0.0,
    activation: Literal["relu", "gelu", "silu"] | None = None,
) -> HeadInfo:
    """Replace the classifier at ``path`` with a new head of ``num_classes`` outputs, in place.

    The new head is created on the device and dtype of the module it replaces. A ``num_classes``
    attribute the model keeps (squeezenet, mnasnet, vit, swin) is updated. The auxiliary
    classifiers of googlenet/inception_v3 (present only with ``aux_logits=True``) get a new final
    Linear of ``num_classes`` outputs too (``aux_prefixes``), as torchvision's fine-tuning does.

    Args:
        model: the network, changed in place.
        path: dotted path of the classifier, indices written out (see :func:`resolve_path`).
        num_classes: outputs of the new head.
        type, hidden, dropout, activation: see :func:`build_head`.

    Returns:
        What was replaced, by what, and the new head's state-dict prefix.

    Raises:
        ModelError: the module's input size cannot be read.

    Example:
        >>> info = replace_module(resnet18(), "fc", num_classes=5, dropout=0.2)
        >>> info.path, info.new
        ('fc', 'Linear(512 -> 5, dropout 0.2)')
    """
    old = model.get_submodule(path)
    in_features = in_features_of(old)
    first = next(m for m in old.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    head = build_head(in_features, num_classes=num_classes, type=type, hidden=hidden, dropout=dropout,
                      activation=activation, conv=isinstance(first, nn.Conv2d), **placement(old))
    set_module(model, path, head)
    if isinstance(getattr(model, "num_classes", None), int):
        # bookkeeping only: no torchvision forward reads it, but code inspecting the model does
        model.num_classes = num_classes  # type: ignore[assignment]
    notes = []
    aux_prefixes = []
    for name, aux in aux_classifiers(model).items():
        # the final Linear of an auxiliary classifier gets the new class count too, freshly initialised
        last = [n for n, m in aux.named_modules() if isinstance(m, nn.Linear)][-1]
        linear = aux.get_submodule(last)
        assert isinstance(linear, nn.Linear)
        set_module(model, f"{name}.{last}", nn.Linear(linear.in_features, num_classes, **placement(linear)))
        aux_prefixes.append(f"{name}.{last}.")
        notes.append(f"auxiliary classifier {name}.{last}: Linear({linear.in_features} -> {linear.out_features})  ->  "
                     f"Linear({linear.in_features} -> {num_classes})")
    return HeadInfo(path=path, in_features=in_features, old=describe_module(old), new=describe_module(head), param_prefix=f"{path}.",
                    num_params=sum(p.numel() for p in head.parameters()), notes=tuple(notes),
                    aux_prefixes=tuple(aux_prefixes))


def aux_classifiers(model: nn.Module) -> dict[str, nn.Module]:
    """The auxiliary classifiers of googlenet / inception_v3 built with ``aux_logits=True`` (name -> module)."""
    return {name: aux for name in _AUX_HEADS if isinstance(aux := getattr(model, name, None), nn.Module)}
