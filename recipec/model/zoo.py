"""torchvision's classification zoo: its architectures by name, their families, classifiers and first conv.

Pretrained weights live in :mod:`recipec.model.pretrained`, the default layer groups in
:mod:`recipec.model.presets`; :mod:`recipec.model.families` ties them into one record.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from recipec.errors import ModelError
from recipec.model.heads import resolve_path
from recipec.recipe.archs import arch_problem, family_name
from recipec.weights.adapt import adapt_input_channels

__all__ = ["build_torchvision", "family_of", "first_conv_path", "head_path", "is_architecture",
           "list_architectures", "set_input_channels", "unknown_architecture"]

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
# Where each torchvision family keeps its classifier; "-1" is the last entry of a Sequential.
_HEAD_PATHS = {
    "resnet": "fc", "regnet": "fc", "googlenet": "fc", "inception": "fc", "shufflenet": "fc",
    "vgg": "classifier.-1", "alexnet": "classifier.-1", "mobilenet": "classifier.-1",
    "efficientnet": "classifier.-1", "convnext": "classifier.-1", "mnasnet": "classifier.-1",
    "maxvit": "classifier.-1",
    "densenet": "classifier", "vit": "heads.head", "swin": "head",
    # squeezenet classifies with a 1x1 conv followed by ReLU and global pooling, which stay
    "squeezenet": "classifier.1",
}


@functools.lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    # module=torchvision.models leaves out detection, segmentation, video, optical flow, quantized
    return tuple(torchvision.models.list_models(module=torchvision.models))


def is_architecture(arch: str) -> bool:
    """Whether ``arch`` is one of torchvision's classification models."""
    return arch in _architectures()


def list_architectures() -> list[str]:
    """Names of torchvision's classification models, sorted (``alexnet`` ... ``wide_resnet50_2``)."""
    return list(_architectures())


def family_of(arch: str) -> str:
    """The torchvision family an architecture belongs to: ``resnet`` for resnet18, resnext50_32x4d
    and wide_resnet50_2, ``vit`` for vit_b_16, ``custom`` for ``package.module:factory``.

    Not to be confused with the model family of :func:`recipec.model.families.family_of`
    (torchvision, timm, factory). The name is not checked against the zoo: an unknown name
    yields its leading letters.
    """
    if family_name(arch) == "factory":
        return "custom"
    match = re.match(r"[a-z]+", arch.lower())
    prefix = match.group(0) if match else arch
    return _FAMILY_ALIASES.get(prefix, prefix)


def unknown_architecture(arch: str) -> ModelError:
    """The error for a name that is not in the zoo: ``recipec validate``'s own words, with the nearest names
    (torchvision's, or ``timm/<name>`` for a timm model)."""
    problem = arch_problem(arch)
    if problem is None:  # a name the shipped list has and this torchvision lacks (an older torchvision)
        problem = (f"unknown architecture {arch!r}: torchvision {torchvision.__version__} has no such "
                   "classification model (see recipec.model.zoo.list_architectures())")
    return ModelError((("model", "arch"), problem))


def build_torchvision(arch: str, kwargs: Mapping[str, Any] | None = None, *, pretrained: bool = False) -> nn.Module:
    """Build a torchvision classification model with random weights; nothing is downloaded.

    Looked up by name, never imported from a path. googlenet and inception_v3 are built with
    ``aux_logits=False, init_weights=False`` unless ``kwargs`` say otherwise, so that they return
    a tensor, not a named tuple, in training too.

    Args:
        arch: a torchvision classification model name.
        kwargs: keyword arguments for the model class (``weights`` is not one: that is ``model.weights``).
        pretrained: the model is about to receive torchvision's pretrained weights; build it as
            torchvision does for them (googlenet and inception_v3 get ``transform_input=True``).

    Returns:
        The model, in training mode.

    Raises:
        ModelError: unknown architecture (with suggestions), or arguments it rejects.

    Example:
        >>> model = build_torchvision("vit_b_16", {"image_size": 32})
    """
    kwargs = dict(kwargs or {})
    if arch not in _architectures():
        raise unknown_architecture(arch)
    if "weights" in kwargs:
        raise ModelError((("model", "kwargs", "weights"), "set pretrained weights with model.weights, not in kwargs"))
    defaults = {**_BUILD_DEFAULTS.get(arch, {}), **(_PRETRAINED_DEFAULTS.get(arch, {}) if pretrained else {})}
    kwargs = {**defaults, **kwargs}
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError((("model", "kwargs"), f"{arch} rejected its arguments {kwargs!r}: {exc}")) from exc
    except (MemoryError, RuntimeError) as exc:  # "DefaultCPUAllocator: can't allocate memory": sizes in kwargs
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ModelError((("model", "kwargs"), f"{arch} with {kwargs!r} does not fit in memory: {exc}")) from exc


def head_path(model: nn.Module, arch: str) -> str | None:
    """Dotted path of the classifier of ``arch``'s torchvision family, indices written out
    (``classifier.6``), or None for a family recipec knows no classifier path of.

    Raises:
        ModelError: the family's path is not in ``model``.
    """
    path = _HEAD_PATHS.get(family_of(arch))
    return None if path is None else resolve_path(model, path, at=("model", "head"))


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

