"""Architectures and their pretrained weights: torchvision's classification zoo or your own factory.

Weights are read from torch hub's local cache only; recipec downloads nothing unless
``RECIPEC_ALLOW_DOWNLOAD=1`` is set, and it never unpickles anything but tensors.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from recipec.errors import ModelError, WeightsUnavailableError

__all__ = [
    "WeightsInfo", "build_architecture", "family_of", "first_conv_path", "list_architectures",
    "load_pretrained_state_dict", "normalization_of", "resolve_weights", "set_input_channels", "weights_cache_path",
]

Normalization = tuple[tuple[float, ...], tuple[float, ...]]

_FAMILY_ALIASES = {"wide": "resnet", "resnext": "resnet"}
# Eval output must be a tensor, so the auxiliary classifiers are off unless asked for; torchvision's
# own weight init for these two is slow and about to stop being the default, so it is off too.
_BUILD_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
# torchvision builds these with transform_input=True whenever it loads their weights: the weights
# expect (x - 0.5) / 0.5 inputs, which the model derives from ImageNet-normalised ones.
_PRETRAINED_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True},
    "inception_v3": {"transform_input": True},
}
# densenet checkpoints predate module names without dots: features...denselayer1.norm.1.weight
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


@dataclass(frozen=True)
class WeightsInfo:
    """Where a set of pretrained weights came from and what it expects.

    Attributes:
        name: e.g. ``ResNet18_Weights.IMAGENET1K_V1`` (``DEFAULT`` resolved to the real name).
        url: where torchvision publishes the file.
        path: the file in the local torch hub cache.
        sha256_prefix: the hash prefix in the file name (torch hub checks it on download), if any.
        num_params: parameter count from the weights' metadata.
        num_categories: number of classes the weights were trained on.
        normalization: ``(mean, std)`` of the pretraining transforms, or None.
        recipe: URL of the training recipe, if published.
        license: license URL or name, if the metadata has one.
    """

    name: str
    url: str
    path: Path
    sha256_prefix: str | None
    num_params: int | None
    num_categories: int | None
    normalization: Normalization | None
    recipe: str | None
    license: str | None


@functools.lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    # module=torchvision.models leaves out detection, segmentation, video, optical flow, quantized
    return tuple(torchvision.models.list_models(module=torchvision.models))


def list_architectures() -> list[str]:
    """Names of torchvision's classification models, sorted (``alexnet`` ... ``wide_resnet50_2``)."""
    return list(_architectures())


def family_of(arch: str) -> str:
    """The family an architecture belongs to: ``resnet`` for resnet18, resnext50_32x4d and
    wide_resnet50_2, ``vit`` for vit_b_16, ``custom`` for ``package.module:factory``.

    The name is not checked against the zoo: an unknown name yields its leading letters.
    """
    if ":" in arch:
        return "custom"
    match = re.match(r"[a-z]+", arch.lower())
    prefix = match.group(0) if match else arch
    return _FAMILY_ALIASES.get(prefix, prefix)


def _unknown_architecture(arch: str) -> ModelError:
    names = list_architectures()
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in difflib.get_close_matches(arch.lower(), lowered, n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(repr(n) for n in close)}? " if close else ""
    return ModelError((("model", "arch"), (
        f"unknown architecture {arch!r}; {hint}(any of the {len(names)} torchvision classification models, "
        "see recipec.model.zoo.list_architectures(), or 'package.module:factory' for your own)")))


def build_architecture(arch: str, kwargs: Mapping[str, Any] | None = None, *, pretrained: bool = False) -> nn.Module:
    """Build an architecture with random weights; nothing is downloaded.

    googlenet and inception_v3 are built with ``aux_logits=False, init_weights=False`` unless
    ``kwargs`` say otherwise, so that they return a tensor, not a named tuple, in training too.

    Args:
        arch: a torchvision classification model name, or ``"package.module:factory"`` where
            factory may be a dotted attribute (``nets:Zoo.small``).
        kwargs: keyword arguments for the model class or factory (``weights`` is not one: that
            is ``model.weights``).
        pretrained: the model is about to receive torchvision's pretrained weights; build it as
            torchvision does for them (googlenet and inception_v3 get ``transform_input=True``).

    Returns:
        The model, in training mode.

    Raises:
        ModelError: unknown architecture (with suggestions), a factory that cannot be imported,
            found or called, one that does not return an ``nn.Module``, or arguments it rejects.

    Example:
        >>> model = build_architecture("vit_b_16", {"image_size": 32})
    """
    kwargs = dict(kwargs or {})
    if ":" in arch:
        return _build_custom(arch, kwargs)
    if arch not in _architectures():
        raise _unknown_architecture(arch)
    if "weights" in kwargs:
        raise ModelError((("model", "kwargs", "weights"), "set pretrained weights with model.weights, not in kwargs"))
    defaults = {**_BUILD_DEFAULTS.get(arch, {}), **(_PRETRAINED_DEFAULTS.get(arch, {}) if pretrained else {})}
    kwargs = {**defaults, **kwargs}
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError((("model", "kwargs"), f"{arch} rejected its arguments {kwargs!r}: {exc}")) from exc


def _build_custom(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ModelError((("model", "arch"), (
            f"cannot import module {module_name!r} for factory {arch!r}: {type(exc).__name__}: {exc} "
            "(is its package installed, or its directory on PYTHONPATH?)"))) from exc
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            owner = getattr(factory, "__name__", module_name)
            close = difflib.get_close_matches(part, [n for n in dir(factory) if not n.startswith("_")], n=3)
            hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
            raise ModelError((("model", "arch"), f"{owner!r} has no attribute {part!r} (factory {arch!r}){hint}"))
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError((("model", "arch"), f"{arch!r} is a {type(factory).__name__}, not a callable factory"))
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError((("model", "kwargs"), f"factory {arch!r} rejected its arguments {kwargs!r}: {exc}")) from exc
    if not isinstance(model, nn.Module):
        raise ModelError((("model", "arch"), (
            f"factory {arch!r} returned a {type(model).__name__}, not a torch.nn.Module")))
    return model


def resolve_weights(arch: str, name: str) -> WeightsEnum:
    """The torchvision weights enum member named ``name`` (``IMAGENET1K_V1``, ``DEFAULT``, ...) for ``arch``.

    Raises:
        ModelError: at ``model.weights`` for an unknown name (listing the available ones) or a
            custom factory; at ``model.arch`` for an unknown architecture.
    """
    if ":" in arch:
        raise ModelError((("model", "weights"), (
            f"{arch!r} is a custom factory and has no torchvision weights; set model.weights: null "
            "and load a checkpoint with source.checkpoint")))
    if arch not in _architectures():
        raise _unknown_architecture(arch)
    enum = torchvision.models.get_model_weights(arch)
    members = list(enum.__members__)
    if name not in members:
        close = [m for m in members if m.lower() == name.lower()] or difflib.get_close_matches(name, members, n=2)
        hint = f"did you mean {' or '.join(repr(m) for m in close)}? " if close else ""
        raise ModelError((("model", "weights"), (
            f"unknown weights {name!r} for {arch}; {hint}available: {', '.join(members)} (or null for random init)")))
    return enum[name]


def _full_name(weights: WeightsEnum) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def weights_cache_path(weights: WeightsEnum) -> Path:
    """Where torch hub keeps ``weights``: ``<torch hub dir>/checkpoints/<file name of the URL>``.

    The hub dir follows ``TORCH_HOME`` (``$TORCH_HOME/hub``) at the time of the call.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def normalization_of(weights: WeightsEnum | None) -> Normalization | None:
    """``(mean, std)`` of the preprocessing the weights were trained with, or None if they have none.

    Fine-tuning should normalise inputs with these statistics, not with those of the new data.
    """
    if weights is None:
        return None
    transforms = weights.transforms()
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _weights_info(weights: WeightsEnum, path: Path) -> WeightsInfo:
    meta = weights.meta
    match = _HASH_IN_NAME.search(path.name)
    categories = meta.get("categories")
    return WeightsInfo(
        name=_full_name(weights), url=weights.url, path=path, sha256_prefix=match.group(1) if match else None,
        num_params=meta.get("num_params"), num_categories=len(categories) if categories is not None else None,
        normalization=normalization_of(weights), recipe=meta.get("recipe"), license=meta.get("license"))


def _fetch(weights: WeightsEnum, path: Path) -> None:
    if os.environ.get("RECIPEC_ALLOW_DOWNLOAD") != "1":
        raise WeightsUnavailableError((("model", "weights"), (
            f"weights {_full_name(weights)} are not in the local cache: expected {path}; download {weights.url} "
            "there (or set TORCH_HOME), or set model.weights: null")))
    match = _HASH_IN_NAME.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # network, disk and hash failures all mean the same thing here
        raise WeightsUnavailableError((("model", "weights"), (
            f"weights {_full_name(weights)} could not be downloaded from {weights.url} to {path}: "
            f"{type(exc).__name__}: {exc}; download the file there yourself, or set model.weights: null"))) from exc


def _load_error(exc: Exception, path: Path, weights: WeightsEnum) -> ModelError:
    message = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsafe:
        return ModelError((("model", "weights"), (
            f"refused to load {path}: it is not a plain tensor checkpoint, unpickling it would call "
            f"{unsafe.group(1)} (nothing was executed); delete it and download {weights.url} again")))
    detail = message.partition("WeightsUnpickler error:")[2] or message
    detail = detail.strip().split(". ")[0].splitlines()[0] if detail.strip() else ""
    return ModelError((("model", "weights"), (
        f"cached weights {path} are corrupt or not a torch checkpoint ({type(exc).__name__}: {detail}); "
        f"delete the file and download {weights.url} again")))


def load_pretrained_state_dict(arch: str, name: str) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Read torchvision's pretrained weights for ``arch`` from the local torch hub cache.

    The file is loaded with ``weights_only=True``: a pickle that needs anything but tensors and
    containers is refused without running it. Legacy densenet keys are renamed to the module
    names of the model :func:`build_architecture` builds. The mapping is returned as loaded (an
    ``OrderedDict`` whose ``_metadata`` carries module versions; mnasnet needs them to load).

    Args:
        arch: a torchvision classification model name.
        name: weights enum name, e.g. ``IMAGENET1K_V1`` or ``DEFAULT``.

    Returns:
        The state dict on the CPU, and where it came from.

    Raises:
        WeightsUnavailableError: the file is not cached (and ``RECIPEC_ALLOW_DOWNLOAD=1`` is not
            set, or the download failed); the message gives the exact path and URL.
        ModelError: unknown architecture or weights name; a cached file that is corrupt, not a
            state dict, or unsafe to unpickle.

    Example:
        >>> state_dict, info = load_pretrained_state_dict("resnet18", "IMAGENET1K_V1")
        >>> info.name
        'ResNet18_Weights.IMAGENET1K_V1'
    """
    weights = resolve_weights(arch, name)
    path = weights_cache_path(weights)
    if not path.is_file():
        _fetch(weights, path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _load_error(exc, path, weights) from exc
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()):
        raise ModelError((("model", "weights"), (
            f"cached weights {path} hold a {type(state_dict).__name__}, not a state dict of tensors; "
            f"delete the file and download {weights.url} again")))
    if family_of(arch) == "densenet":
        for key in list(state_dict):
            match = _DENSENET_LEGACY_KEY.match(key)
            if match:
                state_dict[match.group(1) + match.group(2)] = state_dict.pop(key)
    return state_dict, _weights_info(weights, path)


def first_conv_path(model: nn.Module) -> str:
    """Dotted path of the first ``nn.Conv2d`` the input meets (``conv1``, ``features.0``, ``conv_proj``).

    Registration order is used; it matches the forward order of every torchvision classifier.

    Raises:
        ModelError: the model has no ``Conv2d``.
    """
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return path
    raise ModelError((("model", "in_channels"), (
        f"{type(model).__name__} has no Conv2d, so its input channels cannot be changed; remove model.in_channels")))


def set_input_channels(model: nn.Module, in_channels: int) -> tuple[str, bool]:
    """Rebuild the first convolution for ``in_channels`` input channels, adapting its filters.

    The new conv keeps kernel, stride, padding, dilation, padding mode, bias, device and dtype;
    its weight is ``adapt_input_channels`` of the old one (summed for 1 channel, repeated and
    rescaled otherwise), so pretrained filters keep their response to grey or extra channels.

    Returns:
        The conv's dotted path, and whether it was rebuilt (False when it already had
        ``in_channels`` inputs).

    Raises:
        ModelError: no Conv2d, a grouped first conv, or a model that assumes RGB input
            (googlenet/inception_v3 with ``transform_input=True``).
    """
    from recipec.weights.adapt import adapt_input_channels

    path = first_conv_path(model)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Conv2d)
    if old.in_channels == in_channels:
        return path, False
    if getattr(model, "transform_input", False):
        raise ModelError((("model", "in_channels"), (
            f"{type(model).__name__} has transform_input=True, which re-normalises exactly 3 RGB channels; "
            "set model.kwargs.transform_input: false to use other input channels")))
    if old.groups != 1:
        raise ModelError((("model", "in_channels"), (
            f"the first conv {path} is grouped (groups={old.groups}); its input channels cannot be adapted")))
    geometry: dict[str, Any] = {"kernel_size": old.kernel_size, "stride": old.stride, "padding": old.padding,
                                "dilation": old.dilation, "padding_mode": old.padding_mode}
    new = nn.Conv2d(in_channels, old.out_channels, **geometry, groups=1, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_input_channels(old.weight.detach(), in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
            new.bias.requires_grad_(old.bias.requires_grad)  # type: ignore[union-attr]
    new.weight.requires_grad_(old.weight.requires_grad)
    parent_path, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent_path), leaf, new)
    return path, True
