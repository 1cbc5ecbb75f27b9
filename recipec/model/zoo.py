"""Architectures by name: torchvision's classification zoo or your own factory, and their first conv.

Pretrained weights live in :mod:`recipec.model.pretrained`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import shlex
import sys
from collections.abc import Collection, Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from recipec.errors import ModelError, UntrustedFactoryError

__all__ = ["build_architecture", "check_factory_trust", "factory_names", "family_of", "first_conv_path",
           "list_architectures", "set_input_channels"]

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


def build_architecture(arch: str, kwargs: Mapping[str, Any] | None = None, *, pretrained: bool = False,
                       trust_factories: bool | Collection[str] = True, origin: str = "",
                       weights: str | None = None) -> nn.Module:
    """Build an architecture with random weights; nothing is downloaded.

    torchvision architectures are looked up by name and never imported from a path. A custom
    factory is imported and called only when trusted: every one is when the recipe is the
    caller's own (``trust_factories=True``, what ``compile_recipe`` does); a recipe read from a
    file (an export's metadata, a training state) passes the exact factories its user trusts,
    and any other is refused before its module is imported (see :func:`check_factory_trust`).
    Even a trusted factory must be an ``nn.Module`` subclass or a Python function, and return
    an ``nn.Module``.

    googlenet and inception_v3 are built with ``aux_logits=False, init_weights=False`` unless
    ``kwargs`` say otherwise, so that they return a tensor, not a named tuple, in training too.

    Args:
        arch: a torchvision classification model name, or ``"package.module:factory"`` where
            factory may be a dotted attribute (``nets:Zoo.small``).
        kwargs: keyword arguments for the model class or factory (``weights`` is not one: that
            is ``model.weights``).
        pretrained: the model is about to receive torchvision's pretrained weights; build it as
            torchvision does for them (googlenet and inception_v3 get ``transform_input=True``).
        trust_factories: ``True`` when the caller wrote the recipe, else the ``"package.module:factory"``
            names the caller trusts (``()`` or ``False``: none).
        origin: where the recipe came from (a file), named in a refusal.
        weights: ``model.weights``; a ``timm/<name>`` model is built from that tag's pretrained
            config (its class count and image size), by name, never imported from a path.

    Returns:
        The model, in training mode.

    Raises:
        ModelError: unknown architecture (with suggestions), a factory that cannot be imported,
            found or called, one that is not an ``nn.Module`` class or a Python function (a
            builtin such as ``os:system``), one that does not return an ``nn.Module``, or
            arguments it rejects.
        UntrustedFactoryError: a custom factory that ``trust_factories`` does not name.

    Example:
        >>> model = build_architecture("vit_b_16", {"image_size": 32})
    """
    kwargs = dict(kwargs or {})
    if arch.startswith("timm/"):
        from recipec.model.timm import build_timm

        return build_timm(arch, kwargs, weights=weights)
    if ":" in arch:
        check_factory_trust(arch, trust_factories, origin=origin)
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
    except (MemoryError, RuntimeError) as exc:  # "DefaultCPUAllocator: can't allocate memory": sizes in kwargs
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ModelError((("model", "kwargs"), f"{arch} with {kwargs!r} does not fit in memory: {exc}")) from exc


def check_factory_trust(arch: str, trust_factories: bool | Collection[str], *, origin: str = "") -> None:
    """Refuse a custom factory (``"package.module:factory"``) the caller does not trust; import nothing.

    Importing a module runs its code, and so does calling a factory: a recipe that came from a
    file (an export's metadata, a training state) must not choose either. Trust is given per
    factory, by its exact name, as ``trust_remote_code`` is given per call in Hugging Face.

    Args:
        arch: ``model.arch``; torchvision names (no ``:``) pass, as they are looked up by name.
        trust_factories: ``True`` (the caller wrote the recipe), or the exact factory names trusted.
        origin: the file the recipe came from, named in the refusal.

    Raises:
        UntrustedFactoryError: ``arch`` is a custom factory not in ``trust_factories``.
    """
    if ":" not in arch or trust_factories is True:
        return
    if arch in (() if trust_factories is False else factory_names(trust_factories)):
        return
    where = f"{origin}: " if origin else ""
    flag = shlex.quote(arch) if arch.isprintable() else repr(arch)
    raise UntrustedFactoryError(
        f"{where}refused to import the custom factory {arch!r} that the file's recipe names (model.arch): "
        f"a file must not name code that runs, and nothing was imported; if you trust {arch!r}, pass "
        f"--trust-factory {flag} (Python: trust_factories=[{arch!r}])")


def factory_names(trust_factories: str | Collection[str]) -> tuple[str, ...]:
    """``"m:f"`` or ``["m:f", ...]`` -> ``("m:f", ...)``: exact names, never ``True`` (trust everything).

    Raises:
        TypeError: not a name or a collection of names (a bool, a number, a non-str item).
    """
    names = (trust_factories,) if isinstance(trust_factories, str) else trust_factories
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"trust_factories must list 'package.module:factory' names, got {trust_factories!r}")
    return tuple(names)


def _build_custom(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = arch.partition(":")
    package = module_name.partition(".")[0]
    if package in sys.stdlib_module_names:
        # os:popen, subprocess:run, shutil:rmtree are Python functions too, and build no model
        raise ModelError((("model", "arch"), (
            f"{arch!r} is in Python's standard library ({package!r}), which has no model factories; "
            "name a function or torch.nn.Module class of your own package, so nothing was imported")))
    try:
        module = _import_from_cwd(module_name)
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
    if not _is_model_factory(factory):
        kind = "a class that is not a torch.nn.Module" if isinstance(factory, type) else f"a {type(factory).__name__}"
        raise ModelError((("model", "arch"), (
            f"{arch!r} is {kind}; a factory must be a torch.nn.Module subclass or a Python function "
            "that returns one, so nothing was called")))
    from recipec.model.timm import downloads_blocked

    try:
        with downloads_blocked():  # timm:create_model with pretrained: true fetches nothing behind the policy
            model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError((("model", "kwargs"), f"factory {arch!r} rejected its arguments {kwargs!r}: {exc}")) from exc
    if not isinstance(model, nn.Module):
        raise ModelError((("model", "arch"), (
            f"factory {arch!r} returned a {type(model).__name__}, not a torch.nn.Module")))
    return model


def _import_from_cwd(module_name: str) -> Any:
    """Import as ``python -m`` would, the working directory first on ``sys.path`` (for this import only)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _is_model_factory(factory: Any) -> bool:
    """An nn.Module subclass, or a function written in Python (a static or class method too).

    Builtins (``os.system``), other classes (``subprocess.Popen``) and callable objects are not
    factories of models, whatever a recipe says.
    """
    if isinstance(factory, type):
        return issubclass(factory, nn.Module)
    if inspect.ismethod(factory):
        factory = factory.__func__
    return inspect.isfunction(factory)


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

