"""Pretrained timm weights, offline-first: the file a tag names, found in the local caches and read safely.

A tag is read from the Hugging Face hub cache (``$HF_HOME/hub/models--timm--<name>.<tag>/...``),
or for the few timm weights not on the hub from torch hub's cache, and downloaded only when
``RECIPEC_ALLOW_DOWNLOAD=1``. Files are read by :mod:`recipec.weights.formats` (safetensors, or
torch with ``weights_only=True``), never by timm's own loader.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch.hub
from torch import Tensor, nn

from recipec.errors import CheckpointError, ModelError, WeightsUnavailableError
from recipec.recipe.archs import TIMM_PREFIX, family_name
from recipec.model.pretrained import Normalization, WeightsInfo
from recipec.model.offline import hub_cache
from recipec.model.timm import import_timm, model_name, pretrained_cfg
from recipec.weights import formats

__all__ = ["load_timm_weights", "preprocessing_of", "timm_filtered", "timm_normalization", "timm_preprocessing"]

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's load_state_dict_from_hf tries, in order


def _locate(cfg: Any, hub_id: str) -> tuple[Path, str]:
    """The weights file of a pretrained config (downloading it only when allowed), and its URL."""
    allowed = os.environ.get("RECIPEC_ALLOW_DOWNLOAD") == "1"
    if cfg.file and cfg.source != "hf-hub":  # timm's order: a local file first, then the hub, then the url
        path = Path(cfg.file).expanduser()
        if path.suffix == ".npz":
            raise _npz_refusal(hub_id, str(path))
        if not path.is_file():
            raise WeightsUnavailableError((("model", "weights"), (
                f"timm's pretrained config of {hub_id} names the local file {path}, which is not there; "
                "put the file there, or set model.weights: null")))
        return path, str(path)
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache  # noqa: PLC0415  (comes with timm)

        repo = cfg.hf_hub_id.partition("@")[0]
        if cfg.custom_load == "hf":  # timm reads these with a model-specific loader, not as a state dict
            raise ModelError((("model", "weights"), (
                f"timm loads weights {hub_id} ({repo}, file {cfg.hf_hub_filename}) with a model-specific loader "
                "(custom_load 'hf') that recipec does not run; pick another tag, or load the converted weights "
                "with source.checkpoint")))
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
        cache = hub_cache()
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache)
            if isinstance(found, str):
                return Path(found), f"https://huggingface.co/{repo}/blob/main/{file}"
        url = f"https://huggingface.co/{repo}"
        if not allowed:
            raise WeightsUnavailableError((("model", "weights"), (
                f"weights {hub_id} are not in the local Hugging Face hub cache: expected hub repository {repo}, "
                f"file {files[0]} under {cache / ('models--' + repo.replace('/', '--'))}; download it there "
                f"(hf download {repo} {files[0]}, or set HF_HOME), set RECIPEC_ALLOW_DOWNLOAD=1, "
                "or set model.weights: null")))
        errors = []
        for file in files:
            try:
                return Path(hf_hub_download(repo, file, cache_dir=cache)), f"{url}/blob/main/{file}"
            except Exception as exc:  # network, missing file, disk: all mean "not available"
                errors.append(f"{file}: {type(exc).__name__}: {exc}")
        raise WeightsUnavailableError((("model", "weights"), (
            f"weights {hub_id} could not be downloaded from hub repository {repo} ({'; '.join(errors)}); "
            "download the file into the hub cache yourself, or set model.weights: null")))
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.suffix == ".npz":  # refused before any download: the file could not be read anyway
            raise _npz_refusal(hub_id, cfg.url)
        if not path.is_file():
            if not allowed:
                raise WeightsUnavailableError((("model", "weights"), (
                    f"weights {hub_id} are not in the local cache: expected {path}; download {cfg.url} there "
                    "(or set TORCH_HOME), set RECIPEC_ALLOW_DOWNLOAD=1, or set model.weights: null")))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(cfg.url, str(path), progress=False)
            except Exception as exc:
                raise WeightsUnavailableError((("model", "weights"), (
                    f"weights {hub_id} could not be downloaded from {cfg.url}: {type(exc).__name__}: {exc}"))) from exc
        return path, cfg.url
    raise ModelError((("model", "weights"), f"timm publishes no file for weights {hub_id}; pick another tag"))


def _npz_refusal(hub_id: str, where: str) -> ModelError:
    """timm reads JAX ``.npz`` weights with each model's own ``load_pretrained``; recipec reads tensors only."""
    name = hub_id[len(TIMM_PREFIX):].partition(".")[0]
    timm = import_timm()
    on_hub = [p.partition(".")[2] for p in timm.list_pretrained(f"{name}.*")
              if timm.models.get_pretrained_cfg(p).hf_hub_id]
    others = f"tags of {TIMM_PREFIX}{name} on the Hugging Face hub: {', '.join(on_hub)}" if on_hub else (
        f"{TIMM_PREFIX}{name} has no tag on the Hugging Face hub")
    return ModelError((("model", "weights"), (
        f"weights {hub_id} are published only as a JAX .npz file ({where}), which timm converts with model-specific "
        f"code and recipec does not read (it reads safetensors and torch files only); pick a tag whose weights are "
        f"on the hub ({others}), or convert the file once with timm and load the result with source.checkpoint")))


def preprocessing_of(cfg: Any) -> dict[str, Any]:
    """The input a pretrained config expects: size, interpolation, crop fraction and mode, mean, std."""
    return {"input_size": list(cfg.input_size), "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
            "crop_mode": cfg.crop_mode, "mean": list(cfg.mean), "std": list(cfg.std)}


def timm_normalization(arch: str, weights: str) -> Normalization:
    """``(mean, std)`` of the pretrained tag ``weights`` of ``arch`` (its ``pretrained_cfg``), read without loading them.

    Raises:
        ModelError: unknown architecture or tag.
    """
    cfg = pretrained_cfg(arch, weights)
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)


def timm_preprocessing(arch: str, weights: str) -> dict[str, Any] | None:
    """How the pretrained tag ``weights`` of ``arch`` expects images resized, from its ``pretrained_cfg``.

    Returns ``{"input_size": side, "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
    "resize_size": None, "mean": [...]}`` (``mean``: the colour ``crop_mode: border`` pads with), or
    None when the config gives no input size.

    Raises:
        ModelError: unknown architecture or tag.
    """
    cfg = pretrained_cfg(arch, weights)
    if not cfg.input_size:
        return None
    return {"input_size": int(cfg.input_size[-2]), "interpolation": str(cfg.interpolation or "bilinear"),
            "crop_pct": float(cfg.crop_pct or 0.875), "crop_mode": str(cfg.crop_mode or "center"),
            "resize_size": None, "mean": [float(m) for m in cfg.mean]}  # mean: crop_mode border pads with it


def load_timm_weights(arch: str, weights: str) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Read the pretrained weights ``weights`` (a tag or ``DEFAULT``) of ``arch`` from the local caches.

    Returns:
        The state dict on the CPU, and where it came from (named by its hub id,
        ``timm/convnext_tiny.in12k_ft_in1k``, with the preprocessing).

    Raises:
        WeightsUnavailableError: not cached and downloads not allowed (naming repository and file).
        ModelError: unknown tag; a cached file that is corrupt or unsafe.
    """
    cfg = pretrained_cfg(arch, weights)
    hub_id = f"{TIMM_PREFIX}{model_name(arch)}.{cfg.tag}"
    path, url = _locate(cfg, hub_id)
    try:
        state_dict = formats.load(path).state_dict
    except CheckpointError as exc:
        raise ModelError((("model", "weights"), (
            f"cached weights {path} of {hub_id} cannot be read ({'; '.join(exc.problems)}); "
            "delete the file and fetch it again"))) from exc
    info = WeightsInfo(name=hub_id, url=url, path=path, sha256_prefix=None, num_params=None,
                       num_categories=cfg.num_classes or None, normalization=(tuple(cfg.mean), tuple(cfg.std)),
                       recipe=None, license=cfg.license, preprocessing=preprocessing_of(cfg))
    return dict(state_dict), info


def timm_filtered(arch: str, model: nn.Module, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """``source.timm_filter``: the installed timm's own ``checkpoint_filter_fn`` of ``arch`` on a state dict.

    timm converts official layouts (original ViT, DeiT, ConvNeXt, CLIP ... checkpoints) into its own
    with a function beside each model family, which its ``load_pretrained`` applies; this runs
    that function, found through the model's registered entrypoint (``timm.models.<family>``),
    never code a file names. It is called as timm calls it (``(state_dict, model)``, or
    ``(state_dict)`` for the older one-argument filters).

    Returns:
        The converted state dict, and what ran (``timm's timm.models.convnext.checkpoint_filter_fn``).

    Raises:
        ModelError: at ``source.timm_filter``: not a timm model, or its family has no filter.
        CheckpointError: at ``source.checkpoint``: the filter failed on this file, or gave no tensors.
    """
    at = ("source", "timm_filter")
    if family_name(arch) != "timm":
        raise ModelError((at, f"timm's checkpoint filters are for timm models (model.arch: timm/<name>), not {arch!r}; "
                              "remove source.timm_filter and map the keys with source.rename"))
    timm = import_timm()
    module = str(timm.models.model_entrypoint(model_name(arch)).__module__)
    fn = getattr(importlib.import_module(module), "checkpoint_filter_fn", None) if module.startswith("timm.") else None
    if fn is None:
        raise ModelError((at, (
            f"{arch}: timm's {module} has no checkpoint_filter_fn (timm loads its checkpoints as they are); remove "
            "source.timm_filter and map another layout with source.rename")))
    ran = f"timm's {module}.checkpoint_filter_fn"
    try:
        try:
            out = fn(dict(state_dict), model)
        except TypeError:  # as timm's load_pretrained: the older filters take the state dict alone
            out = fn(dict(state_dict))
    except Exception as exc:  # a layout the filter does not know: say so, at the file
        raise CheckpointError([(("source", "checkpoint"), (
            f"{ran} could not convert this checkpoint ({type(exc).__name__}: {exc}); it may already be in timm's "
            "layout (remove source.timm_filter) or in one timm does not convert (map it with source.rename)"))]) from exc
    if not isinstance(out, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in out.items()):
        raise CheckpointError([(("source", "checkpoint"), f"{ran} returned {type(out).__name__}, not a state dict of tensors")])
    return dict(out), ran
