"""torchvision's pretrained classification weights: resolved by name, read from the local cache.

Weights are read from torch hub's local cache only; recipec downloads nothing unless
``RECIPEC_ALLOW_DOWNLOAD=1`` is set, and it never unpickles anything but tensors. What any
family's weights report (:class:`WeightsInfo`) and how a ViT's position embedding follows the
image size (:func:`position_embedding_adapts`) are here too.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor
from torchvision.models import WeightsEnum

from recipec.errors import ModelError, WeightsUnavailableError
from recipec.recipe.archs import family_name
from recipec.model.zoo import family_of, is_architecture, unknown_architecture

__all__ = ["Normalization", "WeightsInfo", "load_pretrained_state_dict", "no_weights_error", "normalization_of",
           "position_embedding_adapts", "resolve_weights", "torchvision_preprocessing", "weights_cache_path"]

Normalization = tuple[tuple[float, ...], tuple[float, ...]]

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
        preprocessing: the input the weights expect (timm's ``pretrained_cfg``: ``input_size``,
            ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``), or None.
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
    preprocessing: dict[str, Any] | None = None


def no_weights_error(arch: str) -> ModelError:
    """The error for pretrained weights asked of a custom factory, which has none to offer."""
    return ModelError((("model", "weights"), (
        f"{arch!r} is a custom factory and has no torchvision weights; set model.weights: null "
        "and load a checkpoint with source.checkpoint")))


def resolve_weights(arch: str, name: str) -> WeightsEnum:
    """The torchvision weights enum member named ``name`` (``IMAGENET1K_V1``, ``DEFAULT``, ...) for ``arch``.

    Raises:
        ModelError: at ``model.weights`` for an unknown name (listing the available ones) or a
            custom factory; at ``model.arch`` for an unknown architecture.
    """
    if family_name(arch) == "factory":
        raise no_weights_error(arch)
    if not is_architecture(arch):
        raise unknown_architecture(arch)
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
    names of the model :func:`recipec.model.zoo.build_torchvision` builds. The mapping is
    returned as loaded (an ``OrderedDict`` whose ``_metadata`` carries module versions; mnasnet
    needs them to load).

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


def torchvision_preprocessing(arch: str, name: str) -> dict[str, Any] | None:
    """How torchvision's pretrained weights ``name`` of ``arch`` expect images resized, read without
    loading them: from the weights' ``transforms()`` (``crop_size``, ``resize_size``, ``interpolation``).

    Returns ``{"input_size": crop, "interpolation": "bilinear", "crop_pct": crop / resize, "crop_mode":
    "center", "resize_size": resize}``, or None when the weights define no resize.

    Raises:
        ModelError: unknown architecture or weights name.
    """
    transforms = resolve_weights(arch, name).transforms()
    crop, resize = getattr(transforms, "crop_size", None), getattr(transforms, "resize_size", None)
    if not crop or not resize:
        return None
    interpolation = getattr(transforms, "interpolation", None)
    return {"input_size": int(crop[0]), "interpolation": str(getattr(interpolation, "value", "bilinear")),
            "crop_pct": int(crop[0]) / int(resize[0]), "crop_mode": "center", "resize_size": int(resize[0])}


_POS_EMBED = re.compile(r"(^|\.)(pos_embed|pos_embedding)$")


def position_embedding_adapts(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> list[dict[str, str]]:
    """``adapt`` rules (``pos_embed``) for the absolute position embeddings whose grid differs.

    A ViT built for another image size (timm ``img_size``, torchvision ``image_size``) than its
    pretrained weights has a position embedding of another length, ``(1, prefix + h*w, dim)``;
    the weights' own is resampled to the model's grid, as timm does when it loads pretrained
    weights (``resample_abs_pos_embed``), and the load report says so.
    """
    own = dict(model.named_parameters())
    return [{"match": f"^{re.escape(key)}$", "rule": "pos_embed"} for key, value in state_dict.items()
            if _POS_EMBED.search(key) and key in own and value.dim() == 3 and own[key].dim() == 3
            and value.shape != own[key].shape and value.shape[2] == own[key].shape[2]]
